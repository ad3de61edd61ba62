"""FsCache: a cache of directories that many processes share, crash-safe at every step.

This module owns the on-disk layout of a cache and the protocols by which processes add, read,
hold, release, evict and remove entries.  Every step below can be interrupted by ``SIGKILL``;
the text says, step by step, what a crash there leaves and who cleans it up.

Layout
======
::

    <root>/
      cache.info        format marker: one line, "shared-cache fscache 3"
      budget            the size budget in bytes (absent: unlimited)
      boots             the boots of machine ids met in its leases (see below)
      index.sqlite      the index: accounting and eviction order (see sharedcache.engine.index)
      stage.lock        guards the creation of staging directories against gc
      stage/<id>/       a staging directory: what becomes objects/<name>/, being filled
      objects/<name>/   a committed entry:
        lock              its lock (see below); its modification time is the entry's last use
        entry.json        the commit marker: name, size, creation time
        entry.<boot>.json the commit marker of an entry for one boot only (see below), instead
        meta              the caller's metadata, if any
        keep              present if the entry stays cached once unused (never removed)
        leases/           one empty file per use held by a process: <owner>.<random id>
        data/             the caller's tree, read-only
      trash/<id>/       an entry being deleted; anything here is garbage, but an entry still in
                        use (its lock held, or a live lease), which a member of a group cache
                        renamed here, at any depth (in a directory of hers, or ``objects``
                        itself): it stays, with the directories that hold it, until its users
                        end; the walk that deletes a tree here passes over it, deleting the rest

An entry *exists* when its directory is in ``objects/`` with its commit marker: ``entry.json``,
or ``entry.<boot id>.json`` naming this boot of the machine.  Its row in the
index is its accounting record (see :mod:`sharedcache.engine.index`): the size counted against the
budget and its place in the order of eviction.  The commit renames the directory into place
within the index transaction that inserts the row, and a delete renames it away within the
transaction that deletes the row; a transaction that fails, its COMMIT included (no room for the
journal), renames it back before its rollback (but an eviction's, see "Delete").  So a crash
between the two steps, or an eviction whose transaction fails, is the only way to get one
without the other: a committed directory without its row is adopted (given its row back) by the
next store of that name or by gc, and a row without its directory is dropped.

Names
-----
An entry's name is text, written on disk (``objects/<name>``, and the files named after it above
the engine) as its UTF-8 bytes, as the index and the commit marker hold it.  Python writes a name
in its file-system encoding: UTF-8 in a UTF-8 locale, in the C and POSIX locales and with
``PYTHONUTF8=1``, but Latin-1 (say) under a Latin-1 locale, where a name not ASCII would be other
bytes, another directory to every other process.  Such a process is refused a name not ASCII
(:func:`~sharedcache.engine.layout.check_name`), and leaves alone every name not ASCII that it
finds on disk or in the index: it neither uses, adopts, removes nor evicts those entries, nor
drops their rows (gc counts them, ``names_left_alone``), and listings leave them out.

Garbage collection
------------------
gc reconciles ``objects/`` with the index (a directory without a row: adopted if its marker names
it, else removed; a row without a directory: dropped), then deletes unused entries as a release
does.  It never removes a directory whose entry lock a use holds or that holds a lease of a live
owner, whatever its name and marker say: what it removes it removes as a delete does (below),
under the entry's lock taken without waiting, after a look at the leases.  A directory whose
marker names another name is still an entry to whoever committed it there.  In a group cache,
what another member owns there and this user may not move (a directory of hers, whose ``..`` a
move to another directory rewrites) or open is left where it is, and so is its row: gc names it
and its owner in its report (``left_alone``) and goes on with the rest; so does a directory of
hers in ``stage/``.  A hidden name in ``objects/`` (what a store set aside there: see "Store",
step 5) is never adopted, whatever marker it holds: no entry has one.

What a warm use changes (a lease, the keep flag, the time of last use) lives in the entry's
directory, so that holding and loading an entry never open the index: that is what makes a use
of a ready entry cost a few system calls.  The index's copies of the last use and the keep flag
are lower bounds (both only ever grow), brought up to date by eviction, release and gc; but for
the end of a dead use that an eviction may write in the row alone (see "Delete"), the later of
the two is the last use.

Entry locks
===========
Every entry directory holds a file ``lock``.  Readers and holders take it shared: a reader
(``load``) for as long as it uses the entry, a holder (``hold``) while it checks the entry and
adds its lease.  Whoever deletes the entry takes it exclusively *without waiting*, inside an
index transaction: if that fails, the entry is in use and is not deleted; if it succeeds, no
lease can be added until the entry is gone, so the deleter's look at the leases is final.  The
staging directory's ``lock`` becomes the entry's ``lock`` by the commit rename, so the storer's
exclusive lock covers the entry until the commit is complete.

Every lock here (entries', stages', ``stage.lock``) is opened with
:func:`~sharedcache.engine.locks.open_lock_file` or :func:`~sharedcache.engine.locks.open_recorded`
(never ``os.open``: a fork before the lock would copy the descriptor unrecorded), taken with
:func:`~sharedcache.engine.locks.lock` or :func:`~sharedcache.engine.locks.try_lock` and closed
with :func:`~sharedcache.engine.locks.close`
or :func:`~sharedcache.engine.locks.release`, never ``os.close``: a child that a program forks
(without exec) gives up its copies of them as it starts, but for the reads of the thread that
forked it (see :mod:`sharedcache.engine.locks`).  No worker forked by another thread keeps a
stage locked after its storer died, nor an entry read after its reader left it (which made the
last release leave the entry on disk, unused, until gc).

Entry locks may be held for long (a reader holds one while it reads, and may meanwhile store,
which waits for the index), so whoever holds the index's write lock never waits for an entry
lock that a reader holds: a deleter tries without waiting (and waits at most 50 ms for an
exclusive holder, which holds it for an instant); a store that lost the race for its name
takes the winner's lock shared, which only such instant exclusive holders can delay.

A signal handler runs in the thread it interrupts, which holds what it held until the handler
returns: a wait of the handler's for it would wait for itself, until its timeout or for good.  So
a wait for a lock that this thread holds through another descriptor, and an index transaction
begun while one of this thread's is under way on that index, are refused at once
(:class:`~sharedcache.errors.WaitForItselfError`, see :func:`~sharedcache.engine.locks.lock`
and :meth:`~sharedcache.engine.index.Index.transaction`); a deleter takes such an entry for a
busy one.  An exclusive lock is released before its record goes (:func:`~sharedcache.engine.locks.close`),
so that no handler finds it held by nobody it knows of.

Store (``store(name)``)
-----------------------
1. Read where the commit will write in the index (:meth:`~sharedcache.engine.index.Index.check_for_commit`):
   a damaged index fails the store now, not once it is filled.  Take ``stage.lock`` shared;
   create ``stage/<random id>/``, create its ``lock`` and lock it
   exclusively; release ``stage.lock``.  (gc takes ``stage.lock`` exclusively, so it never sees a
   staging directory whose owner has not locked it yet.)
2. The caller fills ``stage/<id>/data``.  An exception here: the staging directory is unlocked
   and removed (what cannot be removed is left to gc) and the exception re-raised; nothing is
   committed.  So too, with a :class:`~sharedcache.errors.UsageError` naming the entry, when the
   block removed ``data`` or put something else in its place, unless the whole cache directory
   went with it: then with the :class:`~sharedcache.errors.CacheError` of a removed cache.
3. Flush the data to disk (:func:`~sharedcache.engine.fsutil.sync_tree`: an entry of a few files
   inode by inode, a larger one with the whole file system), unless the entry is for this boot
   only or on a tmpfs (below; then nothing in this step is flushed), then measure the tree
   and make it read-only (:func:`~sharedcache.engine.fsutil.disk_usage` with ``seal``): a file
   being written back (by anyone's flush of the file system) can show fewer blocks than it has,
   so it is measured once on disk.  A filler that sealed and measured the tree as it made it
   (:class:`~sharedcache.engine.fsutil.Seal`) is taken at its word where a file's blocks can be
   counted when its last write returns (tmpfs, ext4: see
   :func:`~sharedcache.engine.fsutil.counts_blocks_at_write`): only the data directory itself is
   then sealed and measured.  Write
   ``meta``, ``keep``, ``leases/`` and the holder's lease, if any; flush again (the seal's modes
   and these files); write the commit marker ``entry.json`` (atomically: temp file, fsync,
   rename), or for an entry of this boot only ``entry.<boot id>.json``.
4. Begin an index transaction.  If ``objects/<name>`` has a commit marker, another store won:
   adopt it if it has no row (evicting, as below, until its size fits), give the holder a
   lease on it, discard ours, and with ``keep`` mark it kept, flushed first, once the
   transaction is over (as a use that keeps it does), done.  If the size
   exceeds the budget: refuse (nothing is evicted).  If the accounted size plus ours exceeds
   the budget: evict (below) until it fits, or refuse if what is in use leaves too little.
5. Insert the row, add the size to the accounted size, rename ``stage/<id>`` to
   ``objects/<name>`` (a leftover there without a marker, or what a member of a group cache
   planted, is moved to ``trash/`` first, unless another machine's, below: the store is then
   refused; a directory of another member's, which only she may move to another directory, is
   renamed aside within ``objects/`` instead, to a hidden name no entry has, which her gc moves
   into the trash; what still cannot be renamed there fails the store in one line naming
   ``objects/<name>``), and commit the transaction.  If the
   COMMIT fails (the journal finds no room), rename ``objects/<name>`` back to ``stage/<id>``,
   then roll back: the store fails and leaves nothing, as in step 2 (SQLite, which rolls a
   failed COMMIT back itself, lets the index's write lock go before the rename back: a store or
   a use of the name that found the entry in that moment misses it).  Release the lock.

A crash in steps 1-3 leaves a staging directory whose lock is free: gc and the next store remove
it (under ``stage.lock`` taken exclusively without waiting, they move it into the trash, and delete
it with the trash once the lock is released).  A crash in step 4-5 before the transaction commits
(or after a COMMIT that failed, before the rename back) rolls the index back; the directory may
already be in ``objects/``: a committed entry without its row, adopted by gc or the next store of
the name.  A crash after the rename back leaves a staging directory, as in steps 1-3.

Load (``load(name)``) and hold (``hold(name, owner)``)
-------------------------------------------------------
Open ``objects/<name>/lock`` (absent: miss), take it shared, then check that the path still names
that lock file (else the entry was deleted meanwhile: retry, then miss) and that a commit marker
valid in this boot is there (else miss, unless only another machine can judge the entry's boot:
then an error, see "Entries for this boot"), that its ``data`` is a directory, not a link or
anything else put there, and that ``lock`` is still a regular file (else an error: a damaged
entry, which gc deletes once unused), and set the lock's modification time to now: the last
use, kept explicitly so that LRU eviction is right on ``noatime`` mounts and for users who do not
own the files.  The end of a use sets it again (a load as its block ends, a release as it removes
its lease: see "Leases"), so that a long use that ended last ranks its entry after one that was
begun later and ended first; so does the removal of a dead owner's lease (by a hold, a release,
a deletion that leaves the entry, or gc), the latest that use may have ended.  An eviction that
finds such a lease on an entry that stays unused (kept, or awaited) ends that use too, but never
after the release that asks for the eviction; one that does not stay it deletes, before any
kept entry (see "Delete").

In a group cache every member may write ``objects/``, so one could put a link where an entry
was between two steps.  There the entry's directory is opened first, without following a link
at any step from the cache's directory (a link is a miss), and every step of a load, hold,
release or deletion acts through that descriptor; the check above also asks that
``objects/<name>`` still names that directory.

A load holds the lock until the caller is done.  A hold, still under the lock, checks the
entry's metadata against the caller's (another recipe under this name is a conflict), removes
the leases of dead owners among at most 16 it judges (all, if there are no more; else a run of
them that depends on its pid), creates ``keep`` if asked to (making an entry of this boot
durable first, below), creates its lease file, and releases the lock.  Judging an owner reads
``/proc``: judging every lease, a use of an entry with hundreds of live ones cost half as much
again; judging sixteen, dead leases still cannot pile up, since each hold adds one lease and
removes the dead among sixteen.  A crash anywhere leaves at most a lease file whose owner is
dead, which counts for nothing and is removed by a later hold or release, by a deletion or by gc.

Delete (eviction, ``remove``, release of the last use)
------------------------------------------------------
Within an index transaction: take the entry's lock exclusively without waiting (busy: skip it);
if a live owner holds a lease (or, for the release of a last use and gc's deletion of an unused
entry, ``keep`` exists; or, for these, an eviction and a ``remove`` that evicts by name
(``unless_awaited``), the cache's ``awaited(name)`` says that processes are on their way to
hold it, asked only of an entry about to go): skip it (``remove`` raises, saying which); delete
the row, subtract the size it recorded (a release then evicts down to the budget), rename
``objects/<name>`` to ``trash/<id>``, commit, release the lock; then delete ``trash/<id>``.
The rename is what removes the entry, atomically: a reader or holder either
locked it before (and the delete skipped it) or finds it gone.  It comes after the transaction's
statements: a statement that fails (an unusable index) leaves the entry where it was, and the
rollback its row.  The deletion of a release's entry (and ``remove``'s) can be undone after it:
its lock, held exclusively until the transaction ends, keeps whoever empties the trash off it
(see :meth:`FsCache._empty_trash`), and a transaction that fails after the rename (its COMMIT,
or a statement of the caller's) renames ``trash/<id>`` back to ``objects/<name>`` before its
rollback, which gives the row back: a release that fails leaves its entry as it was.  An
eviction's rename is not undone (the trash may be emptied at any moment: it would hold a lock,
a descriptor, for each entry it deletes): a COMMIT that fails leaves a row whose directory is
gone, which gc drops, as a crash before the commit (or before the rename back) leaves.  A crash
after it leaves a tree in ``trash/``, which gc and the next store delete.

overlayfs (a container's ``/tmp``, often) refuses to rename a directory of a lower layer
(``EXDEV``, unless mounted with ``redirect_dir``), so the entries of a cache warmed in an image's
build cannot be moved into the trash: what cannot be moved there is removed where it is.  At
the same step (under the entry's lock, in the transaction) its commit markers go, and the
directory is flushed: from then on it is no entry, and a transaction that fails does not give
it back (its markers are gone: a release that fails there has lost its entry, as one that finds
it gone).  The rest goes after the commit, so that the
index's write lock is not held for as long as a large tree takes to remove: the tree, ``lock``
last, through a descriptor of the directory opened in the transaction, then the directory
itself if its name still names it (a store of the name may meanwhile have removed what was left,
the same way, and renamed its entry there: a descriptor never reaches that one, and an entry's
directory is never empty).  No reader ever finds a committed entry missing part of its data,
even after a crash: one that took the lock next finds no marker (a miss) or the lock unlinked
(a retry, then a miss).  A crash midway leaves a directory without a marker, a leftover that gc
and the next store of the name remove the same way (gc even if its row, rolled back by a crash
before the commit, says kept).  An abandoned staging
directory is removed in place likewise, under ``stage.lock``.  In a group cache, the files of
another member's entry, in its sticky directory, only that member may remove: to the others
such an entry is one that cannot be deleted now, as one in use is (eviction passes over it, and
gc and a release leave it), until that member deletes it.  Its row, dropped before the move, is
given back in the same transaction, and a release, whose eviction down to the budget ran then
as if the entry were gone, evicts down to it again, counting it.  ``stage/`` and ``trash/`` must be the
group's (setgid, writable by it): one that a member made hers, where the others may not write,
is refused in every step that needs it (a store, a deletion: "run gc to repair it"), and gc sets
it aside and makes a new one (:func:`~sharedcache.engine.layout.make_subdirectory`), in a repairing
open (``FsCache(root, repair=True)``, as ``sc gc`` opens it; another gc says that it needs one).

An eviction deletes entries on behalf of another (the store that needs their room, the
release or the budget that evicts down to it): what points to them from outside the cache is
not the cache's to know, so the names it deleted are kept, per thread, for the caller to take
(:meth:`FsCache.take_evicted`) and remove what it made point to them.

Because the size recorded at commit is the size subtracted at deletion, the accounting cannot
drift; gc recomputes it from the rows anyway.  Eviction walks the rows in the index's order of
last use: first those not marked kept, deleting only entries of this boot that nobody keeps,
then every row; before deleting a candidate it reads the candidate's lock time, and a candidate
used since its row was written gets its row updated and its turn later, so the order is exact
and only candidates' files are looked at.  An entry nobody keeps is deleted by the release of
its last use, so one that an eviction finds unused is garbage (its users died without a
release), which no kept entry makes way for; one that a use kept, which a hold records in the
entry alone, the first walk marks kept, and leaves to the second.  So does it leave a directory
that is no entry of this boot (one that only the machine serving the file system can judge, see
"Entries for this boot") to the order of last use.  Most entries nobody keeps are in use (a job
holds them until it ends), and the first walk passes over every one of them: it first looks at
an entry's leases alone, as the first step of a release does (neither its lock taken nor its
time read), and takes the steps above only for one that no live owner holds.  A live lease
found is an entry in use, which a deletion would skip (one released meanwhile is that release's
to delete; the dead leases beside it are the next hold's, release's or gc's to remove), and
each owner is judged once an eviction, a job's uses being many: each such entry's lock taken
twice and its leases judged at each look made an eviction past a thousand of them 14 times as
slow, under the index's write lock.  It passes over an awaited entry as over one in use: an
entry left for its waiters (a release's, gc's) and then evicted for the budget (which a
non-strict store exceeds) would be made again by each of them.

A candidate whose lock is no later than its row may still hold the leases of owners that died
without a release (a job killed with SIGKILL), whose uses no gc, hold or release has ended yet:
ranked by its lock, such a use would count as ended when it began, and a repository used for
hours by a job that died would go before one used briefly later.  So, under the candidate's
lock taken as a deletion takes it (no hold adds a lease meanwhile), and if no live owner holds
a lease, the eviction removes the dead leases and ends those uses, and the candidate gets its
turn later, as one used since; but only a candidate that stays once unused (``keep`` exists,
or it is awaited, asked only then).  One that does not is garbage once its users are dead, as
the release of its last use would have left it (deleted, as gc deletes it): it keeps the turn
its row gives it among the entries nobody keeps, which go before every kept one.  Such a use
ended between its last sign of life, which nothing records (a lease is written once, as the use
begins), and its discovery; it ends when found (the lock's time set to now), as gc, a hold and
a release end it, but never after the release that asks for the eviction: that eviction comes
after the release's end, which made its entry the most recently used, so there the use ends
just before it (the lock's time set to that moment; only the lock's owner may set a time not
now, so for another member of a group cache the row alone records it, and an index rebuilt by
gc ranks the entry by its lock again).  The release's end is the system clock's now, not its
lock's time, which a file system records up to a tick of its own clock late (4 ms on most
disks): a use recorded in that tick came before it.  The end of an ``sc run`` that gives its
budget back so evicts the repository of a job that died before it, not its own, just released.

Entries for this boot
---------------------
The flush of step 3 is what lets an entry outlive a power loss.  An entry nobody keeps
(``store(keep=False)``) is deleted by the release of its last use, and after a reboot it has no
live use left: what its flush buys is an entry that gc deletes.  On a file system of a local disk
(:data:`~sharedcache.engine.fsutil.LOCAL_DISKS`; of a durable cache) such an entry is therefore
committed without any flush, under the marker ``entry.<boot id>.json``
(``/proc/sys/kernel/random/boot_id``).  Until the machine reboots, every process reads its data
whole from the kernel's page cache, written back or not; a power loss or a crash of the kernel
ends the boot, and with it the marker's validity, so data that never reached the disk is never
taken for an entry.  Such a directory is a leftover, not an entry: a store of the name moves it
to the trash (step 5), and gc deletes it as it deletes an unused entry (every lease on it died
with the boot); listings leave it out, while its row counts against the budget until then.
The first eviction of each boot (with a local view of the disk) retires those rows before it
walks the order of last use, so that an entry of a boot before, which nobody can use, never
outlasts a real one, however long unused (the index records the boot that did it, ``swept
boot``: later evictions of the boot skip this, since no entry of it is stale before it ends).
It looks only at the rows not marked kept, which are few: an entry nobody keeps is deleted by
the release of its last use.
A file system another host may mount (nfs, ceph, fuse...) is not a local disk: there every
entry is flushed, whatever it costs.  A tmpfs (:data:`~sharedcache.engine.fsutil.IN_MEMORY`)
has nothing to write back, and ends with the boot itself: nothing is flushed there, and every
entry gets ``entry.json``.

A version of format 2 knows no marker of one boot: it takes such an entry for a leftover, and its
store of the name moves it into the trash, leases and all.  It refuses a cache of format 3, but
checks the marker only as it opens the cache, so a command of it under way (a use waiting for
another's population, which it takes over if that one dies) goes on after an open of this version
rewrote the marker.  So a cache of format 2 is brought to format 3 only by an open that the
caller's ``older_at_work`` tells that no such command is under way (the repositories: no
population lock held, which every such use waits on, and no population's status record, which
stays from the death of a populator to the takeover by a use that polls its lock); an open that
finds one leaves the marker, and commits every entry it makes durably, under ``entry.json``,
which format 2 reads.

A use that keeps such an entry (``hold`` or ``release`` with ``keep``) first flushes it with
:func:`~sharedcache.engine.fsutil.sync_tree` (the data, its metadata and the boot's marker), under
the entry's lock taken shared and outside any index transaction, then creates ``entry.json``
beside the boot's marker (written aside and flushed, then linked: the first of two keepers wins,
the other finds it there) and flushes the entry's directory and ``objects/``.  A crash or a power
loss anywhere in between leaves the entry of this boot as it was.

Only a process with a local view of the disk writes a marker of one boot, so where that is the
view, a marker of another boot is this machine's before a reboot.  Another machine may reach the
same disk through a file system that this machine serves (nfs, or a FUSE or virtio file system):
a marker of a boot not its own may then be the serving machine's, still running, with the
entry in use there.  Such a process does not use the entry (its boot cannot be judged from
there), neither does gc remove it: a load or hold of the name is refused with an error that says
so (not a miss, which a caller would fill with data it could not store), and so is a store
(:meth:`FsCache._another_kernel_s`), until the serving machine keeps the entry (which makes it
durable) or deletes it.

Leases
------
A lease is a file in the entry's ``leases/`` whose name says which process owns it (see
:mod:`sharedcache.engine.leases`).  An entry with a lease of a live owner is in use exactly as if it
were locked.  An entry whose last users died is deleted by the next gc.  An entry with ``keep``
stays as a cache entry under the budget.  Whoever judges leases judges them with the cache's
``boots``, which links the leases of this machine's containers (with machine ids of their own)
to it after a reboot; it is written (atomically) by a process of the host that judges such a
lease of its own boot, once a boot, outside any lock (a line lost to another host's write at the
same moment is written again at the next such judgement: see :mod:`sharedcache.engine.leases`).

Release (``release(name)``) of a use that does not keep the entry:

1. Without the index or the entry's lock, remove the lease file, set the lock's time to now
   (the end of the use is its last use), remove the dead among the others that a hold would
   judge (above), then look at the rest: if one has a live owner, done (the
   first found ends the look).  Most releases end here: every job but the last leaves the
   entry in use, which nobody deletes, so nothing needs the index.
2. Otherwise (the last use, maybe) create the same lease file again, and in an index
   transaction remove it and delete the entry (above) if no live lease remains, ``keep`` is
   absent and nobody is on the way to hold it (``awaited``: the waiters for the population that
   made it, who would otherwise find it gone and make it again).  An entry left so has no use:
   the last release of those who come to hold it deletes it, or, if they die first, the
   release of the next use, or gc.  The lease given back makes the release whole or nothing: a
   transaction that fails (an unusable index, a COMMIT that finds no room for the journal, or a
   trash that is not the cache's own, which the deletion needs, looked at before the lease
   goes) leaves the use held, its lease given back once more if the transaction had removed it,
   once the entry is renamed back from the trash (see "Delete").  So does a failure in step 1
   after the removal.  A crash between the failed COMMIT and the lease given back leaves the
   use released, as a crash in step 1 does; one before the rename back, a row whose directory
   is in the trash, which gc drops.  SQLite rolls a failed COMMIT back itself, letting the
   index go before the rename back: a store of the name in that moment makes the entry again,
   the rename back then fails, and the release fails with its use gone (the lease is not
   given back into the tree left in the trash, which the next command empties).

Two releases at once never both leave the deletion to the other: each removes its lease
before it looks, so whichever looks second finds neither lease, and goes on to step 2.  The
entry's lock is not taken in step 1: a releaser holding it shared would make the deleter of a
concurrent last release (which locks without waiting) take the entry for one in use, and leave
it without a lease.  A release whose lease was found the last may be overtaken while the lease
is away: another release, or gc, deletes the entry (its use is over, the entry unused); step 2
then finds the entry gone, or another in its place, and reports it deleted.  So does step 1,
when its own look finds the entry gone (a private cache names it by its path), and it gives no
lease back then: the name may hold another entry by now.  A crash in step 1
leaves the use released; one after the lease is given back leaves it held, as if the release
never ran.  A release that keeps the entry (``keep``) takes step 2 directly, sets the lock's
time there and marks the entry kept in the transaction.  A release that leaves the entry (kept)
writes its lock's time into its row too, before it evicts down to the budget: it is the most
recently used.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from _thread import RLock  # threading's, without importing threading
from _thread import _local as thread_local  # threading.local, without importing threading
from _weakref import ref as weak_reference  # weakref.ref, without importing weakref

from ..errors import (
    BusyError,
    CacheError,
    ConflictError,
    EntryTooLargeError,
    LeasedError,
    MissError,
    NoSpaceError,
    ProcessLimitError,
    UsageError,
    WaitTimeoutError,
    no_space_for,
    over_limit,
    raise_if_over_limit,
    writes_as_utf8,
)
from ..lean import Record, scoped
from ..modes import mkdir, read_umask_again, taken
from ..sizes import format_size, parse_size
from . import locks
from .fsutil import (
    IN_MEMORY,
    LOCAL_DISKS,
    Seal,
    create_empty,
    create_exclusive,
    file_system_type,
    fsync_dir,
    open_directory,
    read_control,
    remove_leftovers,
    remove_tree,
    shown_path,
    sync_tree,
    unique_name,
    unlink_if_present,
    write_atomic,
)
from .layout import (
    ASIDE,
    OBJECTS,
    STAGE,
    TRASH,
    absolute_path,
    check_flag,
    check_locks,
    check_name,
    foreign_subdirectory,
    is_gid,
    make_directory,
    make_subdirectory,
    making,
    open_cache,
    open_existing_cache,
    owner_shown,
    put_away,
)
from .leases import (
    Boots,
    Owner,
    add_lease,
    any_live_lease,
    boot_id,
    lease_of,
    put_lease,
    reclaim_leases,
    remove_lease,
    require_proc,
    scan_lease_owners,
    scan_leases,
    some_dead_leases,
)

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from pathlib import Path

    from .index import Index, Row

# How long a process waits for another's index transaction or entry lock before reporting a
# wedged cache.
_INDEX_TIMEOUT = 60.0
_UNSET = object()
#: The most an entry's metadata may hold, in bytes of UTF-8: what a read of it takes in.
META_BYTES = 1 << 20
#: The index's file in the cache's directory (see :mod:`sharedcache.engine.index`).
INDEX = "index.sqlite"
#: The budget's file in the cache's directory (see :attr:`FsCache.max_size`).
BUDGET = "budget"
#: The files SQLite keeps beside the index (its journals), by the suffix of their names.
_INDEX_SIDE_FILES = ("-wal", "-shm", "-journal")
#: The longest path by which SQLite (its unix VFS) opens a database: 512 bytes, less the 8 of the
#: longest suffix of a journal's name.
_SQLITE_PATH_MAX = 504
#: Held to change what a cache keeps open (its connections, its directories: see FsCache.close),
#: and across a fork: a child never finds it taken by a thread it has not.  Re-entrant, as
#: :data:`~sharedcache.engine.locks._recording` is: a fork by the thread that holds it (a signal
#: handler's: a pre-fork server's respawn) or a use of a cache by a signal handler there cannot
#: wait for itself.
_HELD_OPEN_CHANGE = RLock()
os.register_at_fork(before=_HELD_OPEN_CHANGE.acquire, after_in_parent=_HELD_OPEN_CHANGE.release,
                    after_in_child=_HELD_OPEN_CHANGE.release)
#: The commit marker of an entry flushed to disk before its commit.
MARKER = "entry.json"


def boot_marker() -> str:
    """The commit marker of an entry committed for this boot of the machine only (see "Entries
    for this boot" in the module's docstring)."""
    return f"entry.{boot_id()}.json"


def committed(entry: str) -> str | None:
    """The name of the commit marker that makes the directory ``entry`` an entry now: its
    :data:`MARKER`, else its :func:`boot_marker`; None if it has neither (no entry)."""
    if os.path.lexists(f"{entry}/{MARKER}"):
        return MARKER
    marker = boot_marker()
    return marker if os.path.lexists(f"{entry}/{marker}") else None


def _lockless(entry: str) -> bool:
    """Whether the directory at ``entry`` is committed and has no lock (a deletion in place
    removes the markers first, and the lock last), judged through one descriptor of it: looked
    up twice by its path, the marker of an entry that a store committed meanwhile and the lock
    of one deleted since would pass for one damaged entry's."""
    try:
        directory = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False  # gone meanwhile, or no directory: no entry's damage to say
    try:
        return committed(f"/proc/self/fd/{directory}") is not None \
            and not os.path.lexists(f"/proc/self/fd/{directory}/lock")
    finally:
        os.close(directory)


def _damaged(entry: str) -> bool:
    """Whether the committed directory ``entry`` has lost its data directory or its lock: either
    missing or replaced by anything else (a link, to whatever it points to, is not the entry's)."""
    return _lost(entry, "data", stat.S_ISDIR) or _lost(entry, "lock", stat.S_ISREG)


def _lost(entry: str, name: str, is_kind: Callable[[int], bool]) -> bool:
    try:
        return not is_kind(os.lstat(f"{entry}/{name}").st_mode)
    except FileNotFoundError:
        return True


#: Why an entry that :func:`_damaged` finds is damaged: no use takes it.  ("gc": sc gc and
#: FsCache.gc() alike: a cache of the engine's own is no base of sc's.)
DAMAGE = "its data or lock was replaced or removed; gc deletes it once unused"


def _damaged_error(name: str, root: str) -> CacheError:
    return CacheError(f"entry {name!r} in cache {root} is damaged: {DAMAGE}")


def _markerless(entry: str) -> bool:
    """Whether the directory ``entry`` is known to hold no commit marker valid now: unlike
    :func:`committed`, a failure to look (EIO, ESTALE on nfs) is no answer, for gc removes what
    it finds so, kept or not."""
    try:
        names = os.listdir(entry)
    except OSError:
        return False
    return MARKER not in names and boot_marker() not in names


def _is_marker(name: str) -> bool:
    """Whether ``name`` in an entry's directory is a commit marker: :data:`MARKER`, or the marker
    of an entry for one boot, this one or another."""
    return name.startswith("entry.") and name.endswith(".json")


def _move_to_trash(directory: int | None, name: str, trash: int,
                   later: list[_RemovalInPlace] | None = None) -> str | None:
    """Rename ``name`` (in the directory open as ``directory``; None: a path) into the trash open
    as ``trash``, and return its name there; where the file system refuses to move a directory
    across its layers (overlayfs), remove it in place instead, commit markers first and ``lock``
    last (see "Delete" in the module's docstring): all of it now, or, given ``later``, the markers
    now and the rest as a :class:`_RemovalInPlace` put in ``later``; then return None."""
    moved = unique_name()
    try:
        os.rename(name, moved, src_dir_fd=directory, dst_dir_fd=trash)
        return moved
    except OSError as e:
        if e.errno != errno.EXDEV:
            # Named now, while ``directory`` is open: the system names only ``name``.  (Of the
            # same class: callers pass over what they may not move, or what is gone.)
            shown = shown_path(name if directory is None else f"/proc/self/fd/{directory}/{name}")
            raise OSError(e.errno, f"cannot move {shown} into the trash: {e.strerror}") from e
    tree = open_directory(name, dir_fd=directory)
    try:
        names = os.listdir(tree)
        # entry.json last: one refused (another member's) leaves the entry kept, whatever went before.
        markers = sorted((found for found in names if _is_marker(found)), key=lambda found: found == MARKER)
        for marker in markers:
            unlink_if_present(marker, dir_fd=tree)
        if markers:
            os.fsync(tree)  # before any data goes: no crash leaves a committed entry missing some
        if later is not None:
            later.append(_RemovalInPlace(directory, name, tree))
            tree = -1  # (the removal's now)
            return None
        for found in names:
            if found != "lock" and found not in markers:
                remove_tree(found, dir_fd=tree)
    finally:
        if tree >= 0:
            os.close(tree)
    remove_tree(name, dir_fd=directory)  # the lock and the directory itself
    return None


class _RemovalInPlace:
    """The rest of an entry's removal in place once its markers are gone (see "Delete"), done
    after the index's transaction: through a descriptor of its directory taken under it, so
    that an entry committed under the name meanwhile is never touched."""

    def __init__(self, parent: int | None, name: str, tree: int) -> None:
        self.parent = os.dup(parent) if parent is not None else None
        self.name, self.tree = name, tree

    def finish(self) -> None:
        """Remove the tree, ``lock`` last, then its directory if the name still names it (a
        store of the name may have removed it and renamed its entry there).  What cannot be
        removed now stays, a leftover for gc and the next store of the name."""
        try:
            for found in os.listdir(self.tree):
                if found != "lock":
                    remove_tree(found, dir_fd=self.tree)
            unlink_if_present("lock", dir_fd=self.tree)
            there, tree = os.stat(self.name, dir_fd=self.parent, follow_symlinks=False), os.fstat(self.tree)
            if (there.st_dev, there.st_ino) == (tree.st_dev, tree.st_ino):
                os.rmdir(self.name, dir_fd=self.parent)  # (fails, if an entry replaced it since: not empty)
        except OSError:
            pass  # (the removal whose part this is has committed: what stays is gc's)
        finally:
            os.close(self.tree)
            if self.parent is not None:
                os.close(self.parent)


def _unwritable_file(name: str, directory: int, settle: float) -> str:
    """Why SQLite could not open ``name`` in the directory open as ``directory`` for writing, as
    it would: "is not a regular file" (a FIFO would block its open for good, a symlink or a
    directory fail it), or "cannot be written by this user"; "" if it can, or if there is
    nothing there (SQLite makes it).

    SQLite's connections in other processes remove the journals and make them anew at any
    moment, and give a new one the index's mode only after making it with the umask's: a file
    this user may not write is refused only if it stays so for ``settle`` seconds."""
    deadline = time.monotonic() + settle
    while True:
        try:
            found = os.stat(name, dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            return ""
        if not stat.S_ISREG(found.st_mode):
            return "is not a regular file"
        if os.access(name, os.R_OK | os.W_OK, dir_fd=directory, effective_ids=True, follow_symlinks=False):
            return ""
        if time.monotonic() >= deadline:
            return "cannot be written by this user"
        time.sleep(0.002)


def _open_own(root: str, sub: str, group: int | None) -> int:
    """A descriptor of the subdirectory ``sub`` of the cache at ``root`` (of ``group``), reached
    without following a symlink at any step from the cache's directory (another member of a
    group cache may have swapped one in), so that what is removed or renamed through it is the
    cache's."""
    try:
        directory = open_directory(root)
    except OSError as e:  # renamed and replaced (by a link, as a group cache's creator may), or gone
        raise over_limit(e) or CacheError(
            f"cache {root} is no longer a directory ({e.strerror}); refusing to use it") from None
    try:
        fd = open_directory(sub, dir_fd=directory)
    except OSError as e:
        raise over_limit(e) or locks.Damage(
            f"{root}/{sub} is not a directory of this cache ({e.strerror})", "run gc to repair it") from None
    finally:
        os.close(directory)
    if foreign_subdirectory(sub, fd, group):
        found = os.fstat(fd)
        os.close(fd)
        raise locks.Damage(f"{root}/{sub} is not this cache's own directory (uid {found.st_uid}, mode "
                           f"{stat.S_IMODE(found.st_mode):o}: another member's?)", "run gc to repair it")
    return fd


def stored_budget(root: str, group: int | None) -> int | None:
    """The budget stored in the cache at ``root`` (of ``group``; :attr:`FsCache.max_size`), read
    without opening the cache, which would make one: None if it has none, or there is no cache
    there; CacheError if the cache is not safe to use (:func:`open_existing_cache`), or its
    budget cannot be read or is damaged."""
    directory = open_existing_cache(root, group)
    if directory is None:
        return None
    try:
        return _read_budget(directory, root)
    finally:
        os.close(directory)


def _read_budget(directory: int, root: str) -> int | None:
    """The budget stored in the cache at ``root``, open as ``directory``; None if it has none."""
    try:
        text = read_control(BUDGET, 64, dir_fd=directory) or b"<not a file>"
    except FileNotFoundError:
        return None
    except PermissionError:
        # Another member's, made under umask 077: as useless as garbage to this user, and gc
        # puts it away as it does garbage.
        raise _damaged_budget(root, "this user may not read it") from None
    except LeasedError:
        # Its owner's lease would stop every release until the kernel breaks it: gc puts it
        # away as it does garbage (renaming it, which no lease prevents).
        raise _damaged_budget(root, "held under a file lease by its owner") from None
    except OSError as e:
        raise over_limit(e) or CacheError(f"cannot read {os.path.join(root, BUDGET)}: {e.strerror}") from None
    try:
        return int(text)
    except ValueError:
        raise _damaged_budget(root, repr(text[:20])) from None


def _damaged_budget(root: str, why: str) -> DamagedBudget:
    return DamagedBudget(f"the budget {os.path.join(root, BUDGET)} of cache {root} is damaged ({why}); "
                          "set it again (max_size, or sc --max-size), or run gc to remove it")


def _close_index(db: Index, *, leaving_journals: bool = False) -> None:
    try:
        if leaving_journals:
            db.close_leaving_journals()
        else:
            db.close()
    except db.Error:
        pass  # the journal stays beside the index, and the next connection folds it back


def _number(value: object, kinds: type | tuple[type, ...]) -> bool:
    """Whether ``value`` is a number of ``kinds`` (their subclasses too: an IntEnum, numpy's
    float64), not a bool, which is an int to Python and no number to a caller."""
    return isinstance(value, kinds) and not isinstance(value, bool)


def _give_back(entry: str, lease: str) -> bool:
    """Create the lease ``lease`` of the entry at ``entry`` again; whether that could be done."""
    try:
        put_lease(entry, lease)
    except (CacheError, OSError):
        return False
    return True


def _check_owner(what: str, owner: object) -> None:
    """Refuse an owner of a lease that is no :class:`Owner` (it would fail deep in the
    writing of the lease, after the work it follows)."""
    if not isinstance(owner, Owner):
        raise UsageError(f"{what} must be an Owner (such as Owner.current()), not {owner!r}")


def _check_entry_settings(meta: object, keep: object) -> None:
    """Refuse, before anything is made, a ``meta`` or ``keep`` of :meth:`FsCache.store` and
    :meth:`FsCache.hold` that could not be kept as given."""
    if meta is not None:
        try:
            size = len(meta.encode()) if isinstance(meta, str) else None
        except UnicodeEncodeError:  # a lone surrogate: no UTF-8 holds it
            size = None
        if size is None or size > META_BYTES:
            shown = f"{len(meta):,} characters" if isinstance(meta, str) else repr(meta)
            raise UsageError(f"an entry's meta must be UTF-8 text of at most {META_BYTES:,} bytes, not {shown}")
    check_flag("keep", keep)


def _kept_data_directory(stage: int) -> bool:
    """Whether the ``data`` directory of the staging directory open as ``stage`` is still a
    directory: the walks that seal and measure it would fail with the system's words for a bare
    ``data`` if the block removed it or put something else there (a file, a link)."""
    try:
        return stat.S_ISDIR(os.lstat("data", dir_fd=stage).st_mode)
    except FileNotFoundError:
        return False


def _path(path: str) -> Path:
    """``path`` as the :class:`pathlib.Path` the API hands out (imported only when needed)."""
    from pathlib import Path

    return Path(path)


class Entry(Record):
    """What :meth:`FsCache.entries` reports of one entry; ``users`` are the pids of the live
    processes holding a lease on it, and ``owners`` the same as users read them: a pid,
    qualified (``PID@MACHINE-ID``, ``PID@pid:[NS]``) when it is not of this host and PID
    namespace; ``damage``, why no use can take it (:data:`DAMAGE`), or None."""

    def __init__(self, name: str, size: int, created: float, last_used: float, keep: bool,
                 meta: str | None, in_use: bool, users: tuple[int, ...],
                 owners: tuple[str, ...] | None = None, damage: str | None = None) -> None:
        self.name, self.size, self.created, self.last_used = name, size, created, last_used
        self.keep, self.meta, self.in_use, self.users = keep, meta, in_use, users
        self.owners = tuple(str(pid) for pid in users) if owners is None else owners
        self.damage = damage


class Staging:
    """A staging directory being filled: its name in ``stage/``, the path to fill it by, and a
    descriptor of it (opened without following a symlink)."""

    __slots__ = ("fd", "id", "path")

    def __init__(self, stage_id: str, path: str, fd: int) -> None:
        self.id, self.path, self.fd = stage_id, path, fd


class _ClosedEntry(CacheError, PermissionError):
    """An entry's name taken by a directory of another member's that this user may not open: no
    entry of this user's, and none gc may move (it leaves it to her: a PermissionError, as what
    she alone may move is)."""


class DamagedBudget(CacheError):
    """The budget's file holds no number, is no file, or may not be read: what gc removes."""


class _IndexOutOfReach(CacheError):
    """The index's path is too long for SQLite: nothing that gc could repair."""


class GcReport(Record):
    """What :meth:`FsCache.gc` cleaned and repaired."""

    def __init__(self) -> None:
        self.stages_removed = 0
        self.trash_removed = 0
        #: trees of the trash that could not be removed: another member's (until that member's
        #: next command), or what a fault kept (an I/O error); the next command tries again
        self.trash_left = 0
        self.leftovers_removed = 0
        self.orphans_adopted = 0
        self.orphans_removed = 0
        self.rows_dropped = 0
        self.leases_reclaimed = 0
        self.entries_deleted = 0
        #: entries evicted down to the budget (kept ones, whose users had ended)
        self.entries_evicted = 0
        self.accounting_fixed = 0
        self.index_rebuilt = False
        #: entry directories this process cannot judge (see "Names"): neither removed nor their rows dropped
        self.names_left_alone = 0
        #: what another member of a group cache owns in ``objects/`` or ``stage/`` that this user
        #: may not move or open (a directory of hers), left where it is: one line each, naming its
        #: path and owner
        self.left_alone: list[str] = []
        self.damaged_budget_removed = False
        #: ``stage`` or ``trash`` replaced (something planted there, or another member's)
        self.subdirectories_repaired = 0
        #: what was at a name the cache needs (its index, ``stage.lock``), moved into the trash or
        #: renamed aside, which the next command empties
        self.put_away = 0



class FsCache:
    """A cache of directories at ``root``, shared safely by any number of processes.

    ``max_size`` sets the cache's size budget (bytes, a string such as ``"10GB"``, or None for
    unlimited); the budget is stored in the cache, so every process sees the latest one set.
    Leave it out to use the budget already stored (unlimited for a new cache).
    ``durable`` flushes each entry to disk before committing it, so that even a power loss
    cannot leave a committed entry with missing data; on a local disk, an entry stored without
    ``keep`` is committed for this boot of the machine instead, unflushed, and after a reboot is
    no entry (see "Entries for this boot"), until a use keeps it.  Without it nothing is flushed: every
    guarantee against crashed processes holds, but a power loss may damage recent entries, and
    an entry measured while another process flushes the file system may be recorded a few
    blocks short (until :meth:`gc` recounts it).

    ``group`` (a gid) opens the *group cache* of that group at ``root``, created if needed:
    shared by the members of the group, and used only when asked for (a setgid or
    group-writable directory is refused as a private cache, never joined).  Its directories are
    setgid and writable by the group, its files readable and writable by it, all with explicit
    modes (the process umask is never changed).  Committed data is read-only for everyone, and
    an entry's directory is sticky: a member can delete an unused entry (rename it into the
    trash) but not change another's files.  Only a tree's committer can remove its read-only
    files, so a tree another member deleted stays in the trash until its committer's next
    command in the cache (or its gc).  Without ``group`` the cache is private: 0700, owned by
    this user, and nothing in it is open to anyone else.

    ``repair`` lets the opening rewrite a damaged format marker (emptied, truncated or replaced
    by a directory); :meth:`gc` repairs the rest.  ``FsCache(root, repair=True).gc()`` is what
    ``sc gc`` does.

    ``older_at_work``, given the cache's directory (open), says whether a command of a version
    of format 2 may be under way in a cache of that format (its user's locks held: see "Entries
    for this boot"); the cache then stays of format 2 for this object, which commits every entry
    as format 2 reads it.  Without it the open brings the cache to format 3 at once.

    ``deadline`` is the opening thread's first :attr:`deadline`, which bounds the opening's
    wait for the format marker, held under a file lease by its owner (see :func:`open_cache`).

    ``awaited``, a function its user may set, says (``awaited(name)``) whether processes that
    will hold entry ``name`` are on their way to it (the repositories' waiters for a
    population): the release of its last use, gc and every eviction leave such an entry, unused
    and not kept, for them (see "Delete").
    """

    _leaves_journals = False  # (see let_go)

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_size: int | str | object | None = _UNSET,
        *,
        durable: bool = True,
        timeout: float = _INDEX_TIMEOUT,
        group: int | None = None,
        repair: bool = False,
        older_at_work: Callable[[int], bool] | None = None,
        deadline: float | None = None,
    ) -> None:
        self.root = absolute_path(root, "a cache's root")
        require_proc()
        read_umask_again()
        # (A name would be "not in that group".)
        if group is not None and not is_gid(group):
            raise UsageError(f"a cache's group must be a gid, not {group!r}")
        check_flag("durable", durable)
        check_flag("repair", repair)
        if timeout != _INDEX_TIMEOUT:  # (the default needs no check, and the warm path no import)
            from ..config.settings import seconds

            timeout = seconds("timeout", timeout)
        self.group = group
        self.repair = repair
        #: See the class's docstring: set by the user of the cache.
        self.awaited: Callable[[str], bool] | None = None
        self.durable = durable
        self.timeout = timeout
        self._objects = os.path.join(self.root, "objects")
        self._stage = os.path.join(self.root, "stage")
        self._trash = os.path.join(self.root, "trash")
        self._local = thread_local()
        self.deadline = deadline
        self._kept_open: dict[str, tuple[int, int, int]] = {}  # descriptor, device, inode (see own_directory)
        # Each thread's, with the fork generation that made it (see __del__).
        self._connections: list[tuple[tuple[int, int], weak_reference[Index]]] = []
        # What a repairing open replaced or put out of the way, until gc reports it.
        self.modes, self._subdirectories_repaired, self._format_before = open_cache(
            self.root, group, repair=repair, older_at_work=older_at_work, until=self._wait_until())
        self._names_put_away = 0
        self.shared = self.modes.group
        root = self.root  # (a closure over self would keep it alive until the collector found the cycle)
        self._boots = Boots(lambda: _open_own(root, ".", group), self.modes.file)  # (see Leases)
        if max_size is not _UNSET:
            self.max_size = max_size  # type: ignore[assignment]  # not _UNSET: an int, a str or None

    # -- setup ---------------------------------------------------------------------------------

    def _db(self) -> Index:
        """This thread's connection to the index (a fresh one after a fork)."""
        db: Index | None = getattr(self._local, "db", None)
        if db is not None and self._local.generation == locks.process_key() and not db.broken:
            # Still the index at the cache's path: the cache's directory may have been removed and
            # made again (or the index set aside by a gc, of another thread or process) since
            # this connection was made, and its transactions would then go to a deleted file.
            try:
                now = os.stat(os.path.join(self.root, INDEX), follow_symlinks=False)
                if (now.st_dev, now.st_ino) == self._local.index:
                    return db
            except OSError:
                pass
            self._close_connection()
        from .index import open_index  # SQLite is loaded by what needs the index only

        directory = self._open_own(".")
        try:
            index = self._index_file(directory)
        finally:
            os.close(directory)
        try:
            db = open_index(self.root, index, self.timeout, self.modes.file, until=self._wait_until())
        except CacheError:
            self._raise_if_out_of_sqlite_s_reach()
            raise
        self._local.db, self._local.generation, self._local.index = db, locks.process_key(), index
        with _HELD_OPEN_CHANGE:
            self._connections = [(generation, made) for generation, made in self._connections if made() is not None]
            self._connections.append((locks.process_key(), weak_reference(db)))
        return db

    def _index_file(self, directory: int) -> tuple[int, int]:
        """The device and inode of the index file in the cache's directory open as ``directory``
        (made with the cache's mode if missing: SQLite would give it 0644 whatever the cache):
        the file that SQLite must then open.

        SQLite opens it, and its journals beside it, for writing and without O_NONBLOCK: anything
        there but regular files this user may write (a FIFO would hang every command) makes the
        index unusable, until gc sets it aside.  They are looked at, not opened: closing any
        descriptor of a file drops the POSIX locks that this process holds on it, and SQLite's
        connections in other threads hold theirs there.  (A file lease that their owner holds on
        them is waited out as SQLite connects, when no connection of this process has them open:
        see :func:`~sharedcache.engine.index.open_index`.)"""
        try:
            with making(f"the index of cache {self.root}", self.root):
                fd = os.open(INDEX, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             self.modes.file, dir_fd=directory)
        except FileExistsError:
            pass
        else:
            try:
                if taken(self.modes.file):
                    os.fchmod(fd, self.modes.file)
                made = os.fstat(fd)
            finally:
                os.close(fd)  # (a new file: no connection has it open)
            return made.st_dev, made.st_ino
        if os.fstatvfs(directory).f_flag & os.ST_RDONLY:
            raise CacheError(f"the index of cache {self.root} cannot be written: it is on a read-only file system")
        from .index import JOURNALS_SETTLE  # (loaded by the caller)

        for name in (INDEX, *(INDEX + suffix for suffix in _INDEX_SIDE_FILES)):
            why = _unwritable_file(name, directory, JOURNALS_SETTLE)
            if why:
                problem = f"{self.root}/{name} {why}"
                break
        else:
            try:
                found = os.stat(INDEX, dir_fd=directory, follow_symlinks=False)
                return found.st_dev, found.st_ino
            except OSError as e:  # gone meanwhile: set aside by a gc
                problem = e.strerror or str(e)
        raise CacheError(f"the index of cache {self.root} is unusable ({problem}); run gc to rebuild it") from None

    def _raise_if_out_of_sqlite_s_reach(self) -> None:
        """Raise :class:`_IndexOutOfReach` if SQLite cannot open the index for the length of its
        path (with every symlink on the way resolved, as SQLite resolves them): it says no more
        than that it is "unable to open database file", which read as damage."""
        length = len(os.fsencode(os.path.realpath(os.path.join(self.root, INDEX))))
        if length > _SQLITE_PATH_MAX:
            raise _IndexOutOfReach(
                f"cache {self.root} is too deep for its index: SQLite opens a file by a path of at most "
                f"{_SQLITE_PATH_MAX} bytes, and the index's takes {length:,}; use a cache at a shorter path"
            ) from None

    def close(self) -> None:
        """Close this thread's connection to the index, if it has one, and the directories that
        :meth:`own_directory` keeps open (the next call needing either opens it again): what the
        owner of the cache calls once done with it.  The last connection to close folds SQLite's
        journal back into the index file: a process that ends without the interpreter's
        teardown closes it first.  Another thread's connection closes with its thread, or as it
        calls this; all of them, and the directories, close as the object is freed."""
        self._close_connection()
        with _HELD_OPEN_CHANGE:
            kept, self._kept_open = self._kept_open, {}
        for fd, _, _ in kept.values():
            os.close(fd)

    def _close_connection(self) -> None:
        """Close this thread's connection to the index, if it has one."""
        db: Index | None = getattr(self._local, "db", None)
        self._local.db = None
        if db is not None and self._local.generation == locks.process_key():
            _close_index(db)

    def let_go(self) -> None:
        """Say that this object's owner lets it go while others may still use it (a table of
        caches that drops it): its connections, which close as it is freed, in whichever thread
        lets it go last, then leave the index's journals in place
        (:meth:`~sharedcache.engine.index.Index.close_leaving_journals`).  That moment is not
        its owner's: another thread may be removing the cache's directory meanwhile."""
        self._leaves_journals = True

    def __del__(self) -> None:
        # A program that opens caches for ever (one in a fresh directory per test) kept their
        # connections and directories open, removed or not, until it ran out of descriptors: a
        # connection is freed by the collector alone (SQLite's statement cache refers to it), and
        # it came late.  No other thread can reach the object now, and the lock could be this
        # thread's, held where the collector called this.  (Not set if __init__ failed first.)
        for generation, made in getattr(self, "_connections", ()):
            db = made()
            if db is not None and generation == locks.process_key():  # (a child's inherited ones: the index's)
                _close_index(db, leaving_journals=self._leaves_journals)
        for fd, _, _ in getattr(self, "_kept_open", {}).values():
            os.close(fd)

    def _raise_if_unwritable(self, what: str, error: OSError) -> None:
        """Raise the error to raise for ``error``, met as ``what`` was written in this cache, if
        it was met for want of room (:func:`~sharedcache.errors.no_space_for`) or on a read-only
        file system (said as the index says it: the system's error named a file of no meaning
        to the caller); return for any other."""
        if error.errno == errno.EROFS:
            raise CacheError(f"cache {self.root} cannot be written: it is on a read-only file system") from None
        full = no_space_for(what, error, self.root)
        if full is not None:
            raise full from None

    def _transaction(self) -> AbstractContextManager[Index]:
        db = self._db()
        db.wait_at_most(self._wait())
        return db.transaction()

    @property
    def deadline(self) -> float | None:
        """No wait of this thread's goes on past this ``time.monotonic()`` (None: each is
        bounded by ``timeout`` alone): a caller with a deadline of its own sets it for its
        operations (sc's --timeout).  Per thread, as the connection to the index is: a program
        calling use() from several threads gives each its own."""
        deadline: float | None = getattr(self._local, "deadline", None)
        return deadline

    @deadline.setter
    def deadline(self, deadline: float | None) -> None:
        if deadline is not None and (not _number(deadline, (int, float)) or deadline != deadline):  # (NaN)
            raise UsageError(f"a deadline must be a time.monotonic() or None, not {deadline!r}")
        self._local.deadline = deadline

    @property
    def wait_left(self) -> float:
        """Seconds a wait for a lock of this cache may take now, for a lock of its directory that
        is not the engine's (the repositories' reservations): as long as the engine's own."""
        return self._wait()

    def _wait_until(self) -> float:
        """The ``time.monotonic()`` past which a wait that starts now may not go (:meth:`_wait`)."""
        return time.monotonic() + self._wait()

    def _wait(self) -> float:
        """Seconds a wait for a lock (or for the index) may take now: ``timeout``, or less if
        the deadline is nearer."""
        deadline = self.deadline  # (read once: a signal handler run between two reads may change this thread's)
        if deadline is None:
            return self.timeout
        return max(0.0, min(self.timeout, deadline - time.monotonic()))

    # -- settings --------------------------------------------------------------------------------

    def _sound_budget(self) -> int | None:
        """The budget, or None if it is damaged: what a release restores, as a store that may
        exceed the budget takes it (a budget never fails a job; gc removes a damaged one)."""
        try:
            return self.max_size
        except DamagedBudget:
            return None

    @property
    def max_size(self) -> int | None:
        """The size budget in bytes (None: unlimited), as stored in the cache now."""
        root = self._open_own(".")
        try:
            return _read_budget(root, self.root)
        finally:
            os.close(root)

    @max_size.setter
    def max_size(self, value: int | str | None) -> None:
        self._set_max_size(value, evict=True)

    def _set_max_size(self, value: int | str | None, *, evict: bool) -> None:
        """Write the budget and, if ``evict``, make the evictions it calls for."""
        # Kept in a file of its own, not in the index, so that an index rebuilt by gc keeps it.
        # It is changed under the index's write lock, with the evictions it calls for.
        budget = None if value is None else parse_size(value, "max_size")
        with self._transaction() as db:
            # The index is read before anything changes, so that an unusable one fails the
            # change whole.
            excess = db.total() - budget if budget is not None else 0
            root = self._open_own(".")
            try:
                try:
                    planted = not stat.S_ISREG(os.lstat(BUDGET, dir_fd=root).st_mode)
                except FileNotFoundError:
                    planted = False
                if planted:  # (a directory, which neither the unlink nor the rename below replaces)
                    self.put_away(".", BUDGET)
                if budget is None:
                    unlink_if_present(BUDGET, dir_fd=root)
                else:
                    write_atomic(f"/proc/self/fd/{root}/{BUDGET}", str(budget).encode(), mode=self.modes.file)
            finally:
                os.close(root)
            if evict and excess > 0:
                self._evict(db, excess)
        self._empty_trash()

    @property
    def size(self) -> int:
        """The accounted size of all committed entries, in bytes."""
        return self._db().total()

    # -- staging ---------------------------------------------------------------------------------

    @scoped
    def _staging(self, what: str) -> Iterator[Staging]:
        """A fresh staging directory, locked by this process, removed on exit unless committed
        (and if what follows its making fails: a job's SIGTERM may come then).  A full file
        system met by its making or by the block (for ``what``: "entry 'NAME'") is said as such
        (:func:`~sharedcache.errors.no_space_for`) before the tree is removed: once removed, it
        has given back the inodes whose lack the error would have named."""
        read_umask_again()
        stage_id = unique_name()
        generation = locks.process_key()  # (the maker's)
        made = False
        fd = directory = None
        guard = self._stage_guard()  # (last: a call between it and the try could be cut by Ctrl-C)
        try:
            try:
                locks.lock(guard, locks.SHARED, timeout=self._wait(), what=f"{self.root}/stage.lock")
                stages = self._open_own(STAGE)
                try:
                    # Private to this process's user until the commit, whatever the cache: nobody
                    # else can change or swap anything in it while it is filled and sealed.
                    # Set first: a job's signal can end the call once its mkdir is done, and
                    # the removal of a name never made is a no-op.
                    made = True
                    try:
                        mkdir(stage_id, 0o700, dir_fd=stages)
                    except FileExistsError:
                        made = False  # (not this process's)
                        raise
                    fd = locks.open_lock_file(f"{stage_id}/lock", mode=self.modes.file, dir_fd=stages)
                    directory = open_directory(stage_id, dir_fd=stages)
                finally:
                    os.close(stages)
                locks.lock(fd, locks.EXCLUSIVE)  # nobody else knows the file yet: immediate
            finally:
                locks.close(guard)
            # In a group cache another member could swap the directories on the way to it: it is
            # then named through its descriptor, so that no write meant for it lands elsewhere.
            path = f"/proc/self/fd/{directory}" if self.shared else os.path.join(self._stage, stage_id)
            yield Staging(stage_id, path, directory)
        except OSError as e:
            self._raise_if_unwritable(what, e)
            raise
        finally:
            # The lock first: nfs and FUSE keep a file that is removed while open under another
            # name (.nfs*, .fuse_hidden*), and its directory could not be removed.  Unlocked, the
            # tree may also be swept by gc meanwhile, which the removal tolerates.
            # A child forked in the block that leaves it (sys.exit()) closes its copies, and
            # leaves the stage to the process that made it, which goes on filling it.
            mine = locks.process_key() == generation
            if fd is not None:
                (locks.release if mine else locks.close)(fd)  # (not only closed: see locks.release)
            if directory is not None:
                os.close(directory)  # before the removal, which a process out of descriptors needs them for
            if made and mine:
                try:
                    stages = self._open_own(STAGE)
                    try:
                        remove_tree(stage_id, dir_fd=stages)  # a no-op once the commit renamed it away
                    finally:
                        os.close(stages)
                except (CacheError, ProcessLimitError, OSError):
                    # stage/ swapped meanwhile, the tree not removable, or no descriptor left to
                    # reach it with: what is left is gc's, and the block's own error is the news.
                    pass

    @scoped
    def stage(self) -> Iterator[Path]:
        """A volatile scratch directory on the cache's file system, removed on exit."""
        with self._staging("a staging directory") as staging:
            data = os.path.join(staging.path, "data")
            mkdir(data, 0o777)
            yield _path(data)

    # -- store -----------------------------------------------------------------------------------

    def seal(self) -> Seal:
        """A :class:`~sharedcache.engine.fsutil.Seal` for the filler of a :meth:`store`, asking it
        to measure what it makes only where the commit will take that count."""
        stages = self._open_own(STAGE)
        try:
            return Seal.for_file_system(stages)
        finally:
            os.close(stages)

    @scoped
    def store(
        self,
        name: str,
        *,
        meta: str | None = None,
        keep: bool = True,
        holder: Owner | None = None,
        strict_budget: bool = True,
        seal: Seal | None = None,
    ) -> Iterator[Path]:
        """Fill a fresh directory, committed atomically as entry ``name`` on normal exit.

        If another process commits ``name`` first, this copy is discarded without error.  An
        exception inside the block commits nothing and propagates.  ``meta`` is an opaque string
        kept with the entry (at most :data:`META_BYTES` of UTF-8).  ``holder`` gets a lease on
        the entry committed under ``name`` (this copy or the one that won) before the commit
        completes, so the entry cannot be deleted as unused between its commit and its first use.

        Unused entries are evicted to make room under the budget.  If that is not enough, a
        store with ``strict_budget`` is refused (:class:`NoSpaceError`, or
        :class:`EntryTooLargeError` for an entry larger than the whole budget), and evicts
        nothing (unless an entry was used between the count and the eviction); without it the
        entry is committed anyway (a budget that cannot be read taken for none: gc removes a
        damaged one), and the budget is restored by eviction as soon as entries
        in use are released.  (Repositories use the latter: a budget for kept data must never
        fail a job that needs data now.)

        ``seal`` (from :meth:`seal`) is given to the code that fills the directory, which seals
        and may measure what it makes (see :class:`~sharedcache.engine.fsutil.Seal`); without
        it, or if the filler did not measure, the commit walks the tree to seal and measure it.
        """
        check_name(name)
        _check_entry_settings(meta, keep)
        check_flag("strict_budget", strict_budget)
        if holder is not None:
            _check_owner("holder", holder)
        if seal is not None and not isinstance(seal, Seal):
            raise UsageError(f"seal must be a Seal (from FsCache.seal()), not {seal!r}")
        self._db().check_for_commit(name)
        generation = locks.process_key()
        try:
            with self._staging(f"entry {name!r}") as staging:
                data = os.path.join(staging.path, "data")
                mkdir(data, 0o777)
                yield _path(data)
                if locks.process_key() != generation:
                    return  # a child forked in the block: the stage is its parent's to commit
                # Without a seal the filler sealed and measured nothing: one that says so walks.
                self._commit(staging, name, meta=meta, keep=keep, holder=holder, strict=strict_budget,
                             seal=seal if seal is not None else Seal(measure=False))
        except BaseException:
            # The block's or the commit's error is the news: a trash that cannot be emptied now
            # (no descriptor left; on btrfs, whose directories do not count their subdirectories,
            # it is opened every time) is emptied by the next command.
            try:
                self._empty_trash()
            except (CacheError, ProcessLimitError, OSError):
                pass
            raise
        # Only now: until the staging context is left, the new entry's lock is held, and readers
        # of it would wait for the deletion of whatever the commit evicted.  The entry is
        # committed: what cannot be cleaned now (a trash or stage that a member made hers, until
        # gc repairs it) is the next command's, and fails no store.
        try:
            self._empty_trash()
            self._sweep()
        except (CacheError, ProcessLimitError, OSError):
            pass

    def _commit(
        self,
        staging: Staging,
        name: str,
        *,
        meta: str | None,
        keep: bool,
        holder: Owner | None,
        strict: bool,
        seal: Seal,
    ) -> bool:
        stage = staging.path
        if not _kept_data_directory(staging.fd):
            # The whole cache removed under the block took the data directory with it: that is
            # the news, not the block's use of its directory.
            self._check_still_there()
            raise UsageError(f"entry {name!r}: the block removed or replaced its data directory")
        # An entry nobody keeps ends with the uses of this boot (see "Entries for this boot"),
        # and a tmpfs has no disk to write to.
        kind = file_system_type(staging.fd)
        flush = self.durable and kind not in IN_MEMORY and (keep or kind not in LOCAL_DISKS)
        boot_only = self.durable and not keep and kind in LOCAL_DISKS and not self._format_before
        if flush:
            # Flushed before it is measured: another process's commit flushes the whole file
            # system, and while a file is being written back ext4 can show fewer blocks than it
            # has (4 KB to 20 KB short, in the test that flushes during the walk).  Once on
            # disk, its blocks stay put.
            sync_tree(staging.fd)
        size = seal.apply("data", dir_fd=staging.fd)
        if self.modes.entry != 0o700:
            os.fchmod(staging.fd, self.modes.entry)
        # The time of the commit is the new entry's first use, read from the file system's clock
        # as every later use is (the lock's time, set by a load or hold): with two clocks, a use
        # just after a commit could look older than the commit and be evicted first.
        os.utime("lock", dir_fd=staging.fd, follow_symlinks=False)
        now = os.stat("lock", dir_fd=staging.fd, follow_symlinks=False).st_mtime
        if meta is not None:
            write_atomic(os.path.join(stage, "meta"), meta.encode(), mode=self.modes.file, durable=False)
        if keep:
            create_empty(os.path.join(stage, "keep"), mode=self.modes.file)
        make_directory(os.path.join(stage, "leases"), self.modes.directory)
        if holder is not None:
            add_lease(stage, holder)
        if flush:
            sync_tree(staging.fd)
        import json  # a store or gc only

        marker = {"name": name, "size": size, "created": now}
        write_atomic(os.path.join(stage, boot_marker() if boot_only else MARKER),
                     json.dumps(marker).encode(), mode=self.modes.file, durable=flush)
        fits = True
        with self._transaction() as db:
            lost = committed(os.path.join(self._objects, name)) is not None
            if lost:
                if not db.has(name):
                    self._adopt(db, name, room=True)
                if holder is not None:
                    self.hold(name, holder)
            else:
                db.forget(name)  # what a delete killed before its commit left
                fits = self._make_room(db, name, size, strict=strict) or not strict
                if fits:
                    db.add(name, size, now, now, keep, meta)
                    self._rename_into_objects(staging.id, name)
                    # A COMMIT that fails (no room for the journal) leaves no entry behind, as
                    # a rollback leaves no row: its stage, still locked, is removed as any other.
                    db.at_end(lambda: self._rename_back(OBJECTS, name, STAGE, staging.id), lambda: None)
        if lost:
            if keep:  # as a use that keeps it does, after the transaction, which no flush may hold
                try:
                    with self._shared(name, use=False) as (_, entry):  # (a store that lost is no use)
                        self._keep(entry)
                except MissError:
                    pass  # evicted since, unkept and unused, as any entry may be once stored
            return False
        if not fits:
            raise NoSpaceError(
                f"cache {self.root} cannot fit {name!r} ({format_size(size)}) in its budget "
                f"of {format_size(self.max_size)}: the rest is in use"
            )
        if flush:
            fsync_dir(self._objects)
        return True

    def _make_room(self, db: Index, name: str, size: int, *, strict: bool) -> bool:
        """Within a transaction: evict until ``size`` more bytes fit the budget; return whether
        they do.  Entries evicted are gone even if they do not (a rename into the trash cannot be
        rolled back), so the caller commits the transaction either way.  With ``strict`` (the
        store is refused if they do not fit) nothing is evicted unless enough is unused: a store
        that is refused all the same would have lost those entries for nothing."""
        try:
            budget = self.max_size
        except CacheError:  # damaged, or unreadable
            if strict:
                raise
            budget = None  # (what may exceed the budget is data needed now: see store)
        if budget is None:
            return True
        if size > budget and strict:
            raise EntryTooLargeError(
                f"entry {name!r} ({format_size(size)}) is larger than the budget of cache "
                f"{self.root} ({format_size(budget)})"
            )
        excess = db.total() + size - budget
        if excess <= 0:
            return True
        if strict:
            return self._evict_if_enough(db, excess) >= excess
        return self._evict(db, excess) >= excess

    def _evict_if_enough(self, db: Index, need: int) -> int:
        """Within a transaction: evict as :meth:`_evict` does, but only if the unused entries hold
        ``need`` bytes: evicted for a need they cannot meet, they would be lost for nothing.
        Returns the bytes freed (the rows of entries of a boot before go whatever comes next: no
        entries)."""
        freed = self._retire_other_boots(db)
        if freed >= need or self._unused_bytes(db, need - freed) < need - freed:
            return freed
        return freed + self._evict(db, need - freed)

    def _unused_bytes(self, db: Index, need: int) -> int:
        """Within a transaction: the bytes of the entries nobody uses now, counted in the order of
        eviction until ``need``: what :meth:`_evict` could free.  (One used meanwhile is not freed
        after all: the store then evicts what it can and is refused, as without this count.)"""
        counted = 0
        for name, size in db.sizes_by_last_use():
            if counted >= need:
                break
            if not self._in_use(name):
                counted += size
        return counted

    def _in_use(self, name: str) -> bool:
        """Whether entry ``name`` is in use: locked by a reader or holder, or leased by a live
        process (as :meth:`_retire` judges it, without retiring it), or one this process cannot
        judge (see "Names")."""
        if not writes_as_utf8(name):
            return True
        try:
            with self._entry(name) as entry:
                fd = locks.open_recorded(os.path.join(entry, "lock"))
                try:
                    return not self._lock_if_unused(fd) or bool(scan_leases(entry, boots=self._boots)[0])
                finally:
                    locks.close(fd)  # and with it the lock, if taken
        except (MissError, FileNotFoundError, NotADirectoryError):
            return False  # only its row is left, which a retirement drops

    def _rename_into_objects(self, stage_id: str, name: str) -> None:
        """Rename ``stage/<stage_id>`` to ``objects/<name>`` (step 5 of "Store"), putting away
        first what is there and no entry (:meth:`put_away`)."""
        stages, objects = self._open_own(STAGE), self._open_own(OBJECTS)
        try:
            try:
                os.rename(stage_id, name, src_dir_fd=stages, dst_dir_fd=objects)
            except OSError as e:
                # ENOTDIR: a file, FIFO or symlink, which only a member of a group cache plants.
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise self._uncommitted(name, e) from None
                # A directory without a commit marker (the caller checked), or anything but a
                # directory: not an entry, and nobody can be committing it while the caller
                # holds the index.
                if self._another_kernel_s(name):
                    raise self._judged_elsewhere(name, "store") from None
                try:
                    try:
                        # Into the trash; a directory of another member's, which only she may
                        # move to another directory, is renamed aside within objects/ instead.
                        self.put_away(OBJECTS, name)
                    except FileNotFoundError:
                        pass  # (removed by its maker meanwhile: the name is free)
                    os.rename(stage_id, name, src_dir_fd=stages, dst_dir_fd=objects)
                except OSError as again:  # (what cannot be moved, or was planted anew meanwhile)
                    raise self._uncommitted(name, again) from None
        finally:
            os.close(stages)
            os.close(objects)

    def _uncommitted(self, name: str, error: OSError) -> Exception:
        """The error to raise for ``error``, met as the commit renames into ``objects/<name>``: a
        full file system or a limit of this process said as such, anything else in one line that
        names where the entry could not go (the system names only the staging directory)."""
        return (no_space_for(f"entry {name!r}", error, self.root) or over_limit(error)
                or CacheError(f"cannot commit {name!r} as {self.root}/{OBJECTS}/{name}: {error.strerror}"))

    # -- load and hold ---------------------------------------------------------------------------

    @scoped
    def load(self, name: str) -> Iterator[Path]:
        """Yield the data directory of entry ``name``, read-locked; MissError if there is none."""
        with self._shared(check_name(name)) as (fd, _):
            try:
                yield _path(os.path.join(self._objects, name, "data"))
            finally:
                self._touch(fd)  # (a long read that ended last is the last use, not the one begun last)

    def lock_for_reading(self, name: str) -> int:
        """Entry ``name``'s lock taken shared, as a descriptor the caller closes; MissError if
        there is none.  The entry is in use while any copy of the descriptor is open, so a
        child process that inherits it holds the entry for as long as it keeps it."""
        with self._shared(check_name(name)) as (fd, _):
            copy = os.dup(fd)  # (a copy shares the lock: it is held until every copy is closed)
            locks.hand_over(fd)  # (the caller's, which its children may inherit)
            return copy

    @scoped
    def _shared(self, name: str, *, use: bool = True) -> Iterator[tuple[int, str]]:
        """Take entry ``name``'s lock shared and record the use (unless not ``use``); yield the
        locked descriptor and the entry's path (:meth:`_entry`), for the block to act on that very
        directory."""
        for _ in range(3):
            with self._entry(name) as entry:
                lock = os.path.join(entry, "lock")
                try:
                    fd = locks.open_recorded(lock)
                except (FileNotFoundError, NotADirectoryError):
                    if _lockless(entry):
                        raise _damaged_error(name, self.root) from None
                    break
                except OSError as e:
                    raise_if_over_limit(e)
                    if e.errno == errno.ELOOP:
                        raise _damaged_error(name, self.root) from None
                    raise
                try:
                    locks.lock(fd, locks.SHARED, timeout=self._wait(), what=f"entry {name!r}")
                    if not (locks.still_linked(fd, lock) and self._still_named(name, entry)):
                        continue  # deleted (and maybe stored again) while we waited: look again
                    if not committed(entry):
                        if self._another_kernel_s(name):
                            raise self._judged_elsewhere(name, "use")
                        break
                    if _damaged(entry):  # (under the lock: no use goes on with a lock not a file)
                        raise _damaged_error(name, self.root)
                    if use:
                        self._touch(fd)
                    yield fd, entry
                    return
                finally:
                    locks.close(fd)
        raise MissError(f"no entry {name!r} in cache {self.root}")

    def _still_named(self, name: str, entry: str) -> bool:
        """Whether ``objects/<name>`` still names the directory ``entry`` (a path of
        :meth:`_entry`): a deletion renames it into the trash."""
        if not self.shared:
            return True  # (a plain path: still_linked on a file in it says it all)
        try:
            now = os.stat(os.path.join(self._objects, name), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return os.path.samestat(os.stat(entry), now)

    def _reclaim(self, entry: str, dead: list[str]) -> int:
        """Remove the leases ``dead`` of the entry at ``entry`` (:func:`reclaim_leases`); return
        how many were there.  A use whose owner died without a release ends as it is found dead:
        now, the latest it may have ended, is its last use, as a release's end is."""
        reclaimed = reclaim_leases(entry, dead)
        if reclaimed:
            self._touch(os.path.join(entry, "lock"))
        return reclaimed

    @staticmethod
    def _touch(lock: int | str, at: float | None = None) -> None:
        """Record a use of the entry whose lock is ``lock`` (its descriptor, or its path, whose
        link, if one is put there, is not followed): the lock's time becomes now, or ``at``
        (which only the lock's owner may set)."""
        try:
            # (A descriptor is no link; a path in a group cache may be one another member put there.)
            os.utime(lock, None if at is None else (at, at), follow_symlinks=isinstance(lock, int))
        except OSError:
            pass  # the last use orders eviction only: a read-only lock file must not fail a use

    def path(self, name: str) -> Path:
        """Where entry ``name``'s data is (or would be); it is safe to read only under a use."""
        return _path(os.path.join(self._objects, check_name(name), "data"))

    @scoped
    def _entry(self, name: str) -> Iterator[str]:
        """A path naming entry ``name``'s directory for the steps of one operation.

        In a group cache ``objects/`` is writable by every member, so one could rename an entry
        away and put a link to a directory of yours in its place between two steps: the
        directory is then opened once, without following a link at any step from the cache's
        directory, and named through its descriptor (as a stage is), so that the leases and
        flags written and removed are that directory's, inside the cache.  A link there is no
        entry (MissError).  In a private cache nobody else can write, and the path is plain."""
        if not self.shared:
            yield os.path.join(self._objects, name)
            return
        objects = self._open_own(OBJECTS)
        try:
            fd = open_directory(name, dir_fd=objects)
        except (FileNotFoundError, NotADirectoryError):
            raise MissError(f"no entry {name!r} in cache {self.root}") from None
        except PermissionError:  # a directory of another member's, closed to the others
            raise _ClosedEntry(f"cannot use entry {name!r}: {os.path.join(self.root, OBJECTS, name)} belongs to "
                             f"{self._owner_of(OBJECTS, name)}, who alone may move or remove it") from None
        finally:
            os.close(objects)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)

    def hold(
        self, name: str, owner: Owner, *, keep: bool = False, meta: str | None = None
    ) -> str:
        """Add a lease of ``owner`` on entry ``name``; return its id.  MissError if no entry.

        ``keep`` marks the entry to stay cached once unused (it never clears the mark).  With
        ``meta``, the entry's metadata must equal it, else :class:`ConflictError` is raised and
        no lease is taken.  The index is not opened: this is the whole of a warm use.
        """
        _check_entry_settings(meta, keep)
        _check_owner("owner", owner)
        read_umask_again()
        with self._shared(check_name(name)) as (_, entry):
            if meta is not None:
                found = self._meta(entry)
                if found != meta:
                    raise ConflictError(name, found)
            try:
                self._reclaim(entry, some_dead_leases(entry, boots=self._boots))
                if keep:
                    self._keep(entry)
                return add_lease(entry, owner)
            except OSError as e:  # (a lease is an empty file: no inode left for it, most often)
                self._raise_if_unwritable(f"a use of entry {name!r}", e)
                raise

    def meta(self, name: str) -> str | None:
        """The metadata of entry ``name`` (None if it has none); MissError if there is no entry.
        The index is not opened."""
        with self._entry(check_name(name)) as entry:
            if not committed(entry):
                raise MissError(f"no entry {name!r} in cache {self.root}")
            return self._meta(entry)

    def _flushes_to_keep(self, entry: str) -> bool:
        """Whether keeping the entry at ``entry`` flushes it (:meth:`_make_durable`): not when it
        is durable already, as every entry a use kept is, nor in a cache that flushes nothing.
        A releaser asks before it takes the entry's lock, so that releasing a use of a kept entry
        takes it once, not twice: the lease it releases keeps that very entry in place."""
        return self.durable and not os.path.lexists(f"{entry}/{MARKER}")

    def _make_durable(self, entry: str) -> None:
        """Flush entry ``entry``, committed for this boot only, and give it its durable marker,
        so that it stays once kept (see "Entries for this boot").  The caller holds its lock."""
        if not self._flushes_to_keep(entry):
            return
        marker = read_control(f"{entry}/{boot_marker()}", 1 << 16)
        if marker is None:
            return  # (not a file: the entry is then no entry of this boot either)
        # (In a group cache ``entry`` names an open descriptor: a link to follow, not to refuse.)
        directory = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            sync_tree(directory)  # the data, its metadata and the boot's marker
        finally:
            os.close(directory)
        # Exclusive: two processes keeping it at once in a group cache may not replace each
        # other's file in its sticky directory.
        create_exclusive(f"{entry}/{MARKER}", marker, mode=self.modes.file)
        fsync_dir(entry)
        fsync_dir(self._objects)  # the commit's rename into objects/ was not flushed either

    def _keep(self, entry: str) -> None:
        """Mark the entry at ``entry`` kept, made durable first.  The caller holds its lock."""
        self._make_durable(entry)
        self._mark_kept(entry)

    def _mark_kept(self, entry: str) -> None:
        keep = os.path.join(entry, "keep")
        if not os.path.exists(keep):  # (another member's flag in a group cache may be read-only)
            create_empty(keep, mode=self.modes.file)

    def _meta(self, entry: str) -> str | None:
        # (Its committer may hold it under a lease, which the kernel breaks as this waits.)
        try:
            found = read_control(os.path.join(entry, "meta"), META_BYTES, until=self._wait_until())
        except FileNotFoundError:
            return None
        return None if found is None else found.decode(errors="replace")

    # -- leases ----------------------------------------------------------------------------------

    def release(
        self,
        name: str,
        owner: Owner | None = None,
        *,
        lease: str | None = None,
        keep: bool = False,
        max_size: int | str | None = None,
    ) -> bool:
        """Release one lease on ``name``: the lease ``lease``, or one held by ``owner``.

        If no live use remains, the entry is deleted unless it is marked to keep (``keep`` marks
        it).  Returns whether the entry was deleted: by the release, or by the eviction down to
        the budget that follows it (a kept entry larger than the budget).  Raises MissError if
        there is no such entry, UsageError if that owner holds no lease on it.

        ``max_size`` sets the budget with the release: written first, while the use is held (a
        budget that cannot be written leaves it held), and evicted down to once the entry, if the
        release deletes it, is gone: an entry deleted anyway counts against no budget.
        """
        check_flag("keep", keep)
        read_umask_again()
        if max_size is not None:
            self._set_max_size(max_size, evict=False)
        if lease is None:
            _check_owner("owner (or a lease)", owner)
        elif not isinstance(lease, str):
            raise UsageError(f"a lease is the str that hold() returned, not {lease!r}")
        released_from = None  # the entry's directory, if the lease was removed from it already
        given_back = True
        if keep:
            with self._entry(check_name(name)) as entry:
                flushes = self._flushes_to_keep(entry)
            if flushes:  # first: the index's write lock is never held while the disk writes
                with self._shared(name) as (_, entry):
                    self._make_durable(entry)
        else:
            with self._entry(check_name(name)) as entry:
                if not committed(entry):
                    raise MissError(f"no entry {name!r} in cache {self.root}")
                lease = self._remove_lease(name, entry, owner, lease)
                self._touch(os.path.join(entry, "lock"))  # the end of a use is its last use
                live = overtaken = False
                alive: dict[str, bool] = {}  # (whom the reclaim judged, the look needs not judge again)
                try:
                    self._reclaim(entry, some_dead_leases(entry, alive, self._boots))
                    live = any_live_lease(entry, alive, self._boots)
                    released_from = os.stat(entry)
                except FileNotFoundError:
                    if os.path.lexists(entry):
                        raise
                    overtaken = True  # deleted by another process since the lease was removed
                finally:
                    # Maybe the last use (or the look failed: out of descriptors, most often):
                    # given back, so that the release is whole or nothing.
                    if not live and not overtaken:
                        given_back = _give_back(entry, lease)
                if live and max_size is None:
                    return False  # another use remains: nothing to delete, no index to open
                if live:
                    with self._transaction() as db:
                        self._restore_budget(db, self._sound_budget(), released=self._release_s_end(entry))
                    self._empty_trash()
                    return False
                if overtaken:
                    return True
        try:
            deleted = self._release_in_transaction(name, owner, lease, keep, released_from, given_back)
        except MissError:
            if released_from is None:
                raise
            deleted = True  # deleted (by gc) since it was left without a live use above
        self._empty_trash()
        return deleted

    def _release_in_transaction(self, name: str, owner: Owner | None, lease: str | None, keep: bool,
                                released_from: os.stat_result | None, given_back: bool) -> bool:
        """The steps of :meth:`release` in the index transaction.  ``released_from``: the entry's
        directory, if the lease was found the last live one without the index (the lease is in
        it again if ``given_back``)."""
        with self._transaction() as db, self._entry(name) as entry:
            if not committed(entry):
                raise MissError(f"no entry {name!r} in cache {self.root}")
            if released_from is not None and not os.path.samestat(os.stat(entry), released_from):
                return True  # deleted (by gc) since it was left without a live use, stored anew
            # Read before anything changes, so that an unusable index fails the release whole.
            kept, budget, counted = db.kept(name), self._sound_budget(), db.has(name)
            if not keep and not kept:  # (a trash the deletion cannot use fails the release whole, too)
                os.close(self._open_own(TRASH))
            if given_back:
                # A release that fails, its COMMIT included, fails whole: the entry is put back
                # in place (by the undo registered after this one, run first) and its lease given
                # back, through a descriptor of the directory opened before the lease goes (in a
                # group cache ``entry`` names one closed by then).
                directory = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                db.at_end(lambda: None, lambda: os.close(directory))
                removed = self._remove_lease(name, entry, owner, lease)
                db.at_end(lambda: _give_back(f"/proc/self/fd/{directory}", removed), lambda: None)
            if keep:
                self._mark_kept(entry)
                db.mark_kept(name)
                # (The step that records the end of the use, as it removes the lease, was not taken.)
                self._touch(os.path.join(entry, "lock"))
            ended = self._release_s_end(entry)  # (the uses that the eviction below finds dead end before it)
            if keep or kept:
                deleted = False
                db.set_last_used(name, ended)  # last in the order of eviction
                self._restore_budget(db, budget, released=ended)
            else:
                # Restored once its row is gone (it counts against no budget), and before it
                # moves away: a statement of the eviction that fails leaves it in place.
                deleted = self._retire(db, name, unless_kept=True, entry=entry, restorable=True,
                                       evict_to_budget=lambda: self._restore_budget(db, budget, released=ended))
            # (Kept, it may be what the budget evicted: the caller removes what points to it.  An
            # entry without a row, until gc adopts it, is none the eviction walks, and stays.)
            return deleted or (counted and not db.has(name))

    def _remove_lease(self, name: str, entry: str, owner: Owner | None, lease: str | None) -> str:
        """Remove ``lease`` (or a lease of ``owner``) from the entry at ``entry``; return it.
        UsageError if there is none."""
        if lease is None:
            assert owner is not None  # (checked by the caller)
            lease = lease_of(entry, owner)
        if lease is None or not remove_lease(entry, lease):
            who = f"lease {lease}" if owner is None else f"process {owner.pid}"
            raise UsageError(f"{who} holds no use of {name!r} in {self.root}")
        return lease

    def _restore_budget(self, db: Index, budget: int | None, *, released: float | None = None) -> None:
        """Within a transaction: evict down to ``budget`` (exceeded by non-strict stores), read by
        the caller before it changed anything; ``released``: as for :meth:`_evict`."""
        if budget is not None and db.total() > budget:
            self._evict(db, db.total() - budget, released=released)

    def lease_of(self, name: str, owner: Owner) -> str | None:
        """A lease of ``owner`` on ``name``, if it holds one."""
        try:
            with self._entry(check_name(name)) as entry:
                return lease_of(entry, owner)
        except MissError:
            return None

    def users(self, name: str) -> list[int]:
        """pids of the live processes holding a lease on ``name``."""
        try:
            with self._entry(check_name(name)) as entry:
                return scan_leases(entry, boots=self._boots)[0]
        except MissError:
            return []

    # -- deletion --------------------------------------------------------------------------------

    def remove(self, name: str, *, unless_awaited: bool = False) -> None:
        """Delete entry ``name``, kept or not.  MissError if there is none, BusyError if it is in
        use (naming its users' processes, as listings name them), or, with ``unless_awaited``,
        awaited: an eviction of it by name passes over it as every eviction does (see "Delete")."""
        check_flag("unless_awaited", unless_awaited)
        with self._transaction() as db, self._entry(check_name(name)) as entry:
            if not committed(entry):
                raise MissError(f"no entry {name!r} in cache {self.root}")
            users = scan_lease_owners(entry, boots=self._boots)[0]
            if users:
                owners = ", ".join(dict.fromkeys(str(owner) for owner in users))
                raise BusyError(f"entry {name!r} in {self.root} is in use by process {owners}")
            left_alone: list[str] = []
            if not self._retire(db, name, entry=entry, restorable=True, unless_awaited=unless_awaited,
                                left_alone=left_alone):
                if left_alone:  # another member's, which only she may move (see "Delete")
                    raise BusyError(f"entry {name!r}: {left_alone[0]}")
                # (awaited is asked as _unused asks it: of an entry nobody holds)
                if unless_awaited and self.awaited is not None and self.awaited(name):
                    raise BusyError(f"entry {name!r} in {self.root} is awaited: processes waiting for the "
                                    "population that made it are on their way to use it")
                raise BusyError(f"entry {name!r} in {self.root} is in use (its lock is held)")
        self._empty_trash()

    def _retire(self, db: Index, name: str, *, unless_kept: bool = False, unless_awaited: bool = False,
                entry: str | None = None, evict_to_budget: Callable[[], None] | None = None,
                restorable: bool = False, left_alone: list[str] | None = None) -> bool:
        """Within a transaction: move entry ``name`` to the trash unless it is in use (locked,
        or leased by a live process) or, with ``unless_kept``, marked to keep or awaited, or,
        with ``unless_awaited``, awaited (see :meth:`_unused`).  ``entry``: the
        caller's path of its directory (:meth:`_entry`), if it has one.  ``evict_to_budget``: the
        caller's eviction down to its budget, run whatever the outcome, after the row is dropped
        and before the directory moves; and once more if the directory may not move (another
        member's, on an overlayfs), after its row is back: it counts against the budget again.
        With ``restorable`` (a release's, a removal's: not an eviction's, whose entries may be
        many, each a descriptor held), the entry is moved back if the transaction fails, its lock
        held until then so that nobody empties it from the trash meanwhile.  What only another
        member may move is left where it is, said in ``left_alone`` (gc's report) if given.

        Returns whether it was removed.  The tree itself is deleted after the commit, by
        :meth:`_empty_trash`.
        """
        then = evict_to_budget or (lambda: None)
        if not writes_as_utf8(name):
            then()
            return False  # its directory is at other bytes than this process would name (see "Names")
        if entry is None:
            try:
                with self._entry(name) as opened:
                    return self._retire(db, name, unless_kept=unless_kept, unless_awaited=unless_awaited,
                                        entry=opened, evict_to_budget=then, restorable=restorable)
            except MissError:
                # No directory (a crashed delete), or a link a group member put in its place:
                # only the row is ours to drop (gc moves a link away).
                if db.has(name):
                    db.forget(name)
                then()
                return True
        # The index is read before anything changes, so that an unusable one fails the
        # deletion whole.
        row = db.row(name)
        fd = self._deletion_lock(entry)
        try:
            if fd is not None and not self._unused(db, name, entry, fd, unless_kept=unless_kept,
                                                   unless_awaited=unless_awaited):
                then()
                return False
            # The index's statements first: one that fails leaves the entry where it was, and
            # the transaction's rollback its row (a rename is undone only by another).
            if row is not None:
                db.forget(name)
            then()
            try:
                if fd is not None:
                    moved = self._to_trash(OBJECTS, name, later=True)
                    if moved is not None and restorable:
                        lock, fd = fd, None  # (closed as the transaction ends, not below)
                        db.at_end(lambda: self._rename_back(TRASH, moved, OBJECTS, name),
                                  lambda: locks.close(lock))
                elif os.path.lexists(entry):  # neither lock nor marker (nor a directory): nothing a use holds
                    self._to_trash(OBJECTS, name, later=True)
            except OSError as e:
                # Another member's: a directory of hers, which only she may move to another
                # directory (the move rewrites its `..`), or an entry of hers in a lower layer of
                # an overlayfs, whose files only she may remove, in its sticky directory, in
                # place (see "Delete"); or, for gc, what no move can take (a mount point: a
                # member may mount on a directory of hers).  It stays, and so does its row, and
                # the caller's eviction, which took it for gone, counts it now.
                if not isinstance(e, PermissionError) and (left_alone is None or isinstance(e, FileNotFoundError)):
                    raise
                if row is not None:
                    _, size, created, last_used, keep, meta = row
                    db.add(name, size, created, last_used, bool(keep), meta)
                    then()
                if left_alone is not None:
                    left_alone.append(self._left_alone(OBJECTS, name, e))
                return False
            return True
        finally:
            if fd is not None:
                locks.close(fd)

    def _unused(self, db: Index, name: str, entry: str, fd: int, *, unless_kept: bool, unless_awaited: bool) -> bool:
        """Within a transaction, for :meth:`_retire`: whether the entry at ``entry``, whose lock is
        ``fd``, may be deleted, its lock taken exclusively if so.  The dead leases of one that may
        not are reclaimed, and a kept one (``unless_kept``) is marked kept in its row; an awaited
        one (``unless_kept`` or ``unless_awaited``) is left for its waiters.  ``awaited`` is asked
        last, of an entry about to go: never on the way of a use."""
        if not self._lock_if_unused(fd):
            return False
        live, dead = scan_leases(entry, boots=self._boots)
        if live:
            self._reclaim(entry, dead)
            return False
        if unless_kept and os.path.exists(os.path.join(entry, "keep")):
            db.mark_kept(name)
            self._reclaim(entry, dead)
            return False
        if (unless_kept or unless_awaited) and self.awaited is not None and self.awaited(name):
            self._reclaim(entry, dead)
            return False
        return True

    @staticmethod
    def _deletion_lock(entry: str) -> int | None:
        """A descriptor of the lock of the entry at ``entry``, to delete it; None if there is no
        lock to take: the directory gone (a crashed delete: only the row is left), or neither
        lock nor marker in it, nothing a use can hold.  A damaged entry's lock (see
        :func:`_damaged`), missing or a link, no use can take, nor does any go on with whatever
        else is there (:meth:`_shared`): the entry's directory, which nobody else locks, stands
        in for it."""
        try:
            return locks.open_recorded(os.path.join(entry, "lock"))
        except (FileNotFoundError, NotADirectoryError):
            if committed(entry) is None:
                return None
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
        # Recorded from its opening as any lock (a fork before the lock would copy it unrecorded,
        # to share it); "." since in a group cache ``entry`` is a descriptor's link in /proc, which
        # the recorded open, never through a link at the last step, would refuse.
        return locks.open_recorded(os.path.join(entry, "."))

    @staticmethod
    def _lock_if_unused(fd: int) -> bool:
        """Take an entry's lock exclusively unless a reader or holder has it.

        Readers hold it shared for as long as they use the entry.  An exclusive holder (the
        in-use probe of :meth:`entries`, a store finishing its commit) holds it for an instant:
        it is waited for, briefly, rather than taken for a user; unless it is the step of this
        thread that a signal handler interrupted, which holds it until the handler returns.
        """
        if locks.try_lock(fd, locks.EXCLUSIVE):
            return True
        if locks.try_lock(fd, locks.SHARED):  # held shared: by readers, unless they just left
            return locks.try_lock(fd, locks.EXCLUSIVE)
        try:
            locks.lock(fd, locks.EXCLUSIVE, timeout=0.05)
        except (WaitTimeoutError, UsageError):  # (the UsageError: held by this very thread, see locks.lock)
            return False
        return True

    def drop_lease(self, name: str, lease: str) -> None:
        """Remove the lease ``lease`` of entry ``name`` without opening the index, as a dead
        owner's lease is reclaimed: the entry stays, unused, for the next release, eviction or
        gc to delete.  For a use that its taker cannot release through the index (busy past the
        caller's deadline, or unusable) and must not leave to its owner."""
        try:
            with self._entry(check_name(name)) as entry:
                remove_lease(entry, lease)
        except MissError:
            pass  # deleted already

    def evict(self, nbytes: int | None = None, *, only_if_enough: bool = False) -> int:
        """Delete unused entries, least recently used first, until ``nbytes`` are freed (all of
        them if None); return the bytes freed.  For making room on a full file system.
        ``only_if_enough``: delete none unless the unused entries hold ``nbytes`` (room that
        cannot be had whole is worth no entry)."""
        if nbytes is not None and (not _number(nbytes, int) or nbytes < 0):
            raise UsageError(f"evict's nbytes must be a whole number of bytes or None, not {nbytes!r}")
        check_flag("only_if_enough", only_if_enough)
        with self._transaction() as db:
            need = float("inf") if nbytes is None else nbytes
            evict = self._evict_if_enough if only_if_enough else self._evict
            freed = evict(db, need)  # type: ignore[arg-type]  # inf: all
        self._empty_trash()
        return freed

    def _evict(self, db: Index, need: int, *, released: float | None = None) -> int:
        """Within a transaction: delete unused entries until ``need`` bytes are freed or nothing
        more can go, once the rows of entries of a boot before are gone
        (:meth:`_retire_other_boots`): first those of this boot that nobody keeps, then any, each
        walk least recently used first (see "Delete").  Returns the bytes freed.
        ``released``: the end of the use whose release asks for this eviction
        (:meth:`_last_use_ended`)."""
        freed = self._retire_other_boots(db)
        alive: dict[str, bool] = {}  # (each owner judged once: a job holds many entries)
        for unkept_only in (True, False):
            after: tuple[float, str] = (float("-inf"), "")
            while freed < need:
                batch = db.eviction_batch(after, unkept_only=unkept_only)
                if not batch:
                    break
                for last_used, name, size in batch:
                    if unkept_only and self._leased(name, alive):
                        # In use, as most entries nobody keeps are: no garbage (see "Delete").
                        after = (last_used, name)
                        continue
                    used = self._last_use_ended(name, last_used, released)
                    if used > last_used:
                        # Used since its row was written (or a use of it found dead just now): its
                        # turn comes later, maybe before the rest of this batch, so the walk goes
                        # on from here in the new order.
                        db.set_last_used(name, used)
                        break
                    after = (last_used, name)
                    if unkept_only and committed(os.path.join(self._objects, name)) is None:
                        # No entry of this boot: one that only the machine serving the file system
                        # can judge, or what a deletion left; the walk of every row judges it.
                        continue
                    # An awaited entry goes no more than one in use: its waiters would make it
                    # again.  One that a use kept, which its row does not say yet, is marked kept
                    # and waits for its turn in the second walk.
                    if self._retire(db, name, unless_kept=unkept_only, unless_awaited=True):
                        freed += size
                        self._note_evicted(name)
                        if freed >= need:
                            break
        return freed

    def _leased(self, name: str, alive: dict[str, bool]) -> bool:
        """Whether a live owner holds a lease on entry ``name``, as a look at its leases alone,
        without its lock, finds it (a release's first look, which ends at the first live one);
        ``alive``: as for :func:`any_live_lease`.  False where that look cannot be had (no
        directory, another member's closed one): the deletion's steps judge it then."""
        try:
            with self._entry(name) as entry:
                return any_live_lease(entry, alive, self._boots)
        except (MissError, OSError):
            return False

    def _note_evicted(self, name: str) -> None:
        """Count ``name`` among what :meth:`take_evicted` returns."""
        try:
            self._local.evicted.add(name)
        except AttributeError:  # (this thread's first)
            self._local.evicted = {name}

    def take_evicted(self) -> set[str]:
        """The names of the entries that this thread's evictions deleted since it last asked: to
        make room for a store, down to a budget set (``max_size``) or restored by a release, by
        :meth:`evict` or by :meth:`gc`.  For a caller that points to entries from outside the
        cache (the links of repositories), which the eviction of one entry on behalf of another
        leaves pointing to nothing."""
        evicted: set[str] = getattr(self._local, "evicted", set())
        self._local.evicted = set()
        return evicted

    def _retire_other_boots(self, db: Index) -> int:
        """Within a transaction, once a boot: retire the rows of directories that are no entry in
        this boot, among those not marked kept (see "Entries for this boot"); return the bytes
        freed.  Only with a local view of the disk, where a boot not ours is this machine's
        before a reboot."""
        boot = boot_id()
        if db.swept_boot() == boot or not self._local_view():
            return 0
        freed = 0
        for name, size in db.unkept():
            if not committed(os.path.join(self._objects, name)) and self._retire(db, name):
                freed += size
                self._note_evicted(name)
        db.set_swept_boot(boot)
        return freed

    def _last_use_ended(self, name: str, recorded: float, released: float | None) -> float:
        """For eviction: the time of entry ``name``'s last use, whose row says ``recorded``.  If
        its lock says no later and nobody uses the entry, the uses of its dead owners end first
        (their leases reclaimed), so that a use whose process died without a release (a job
        killed with SIGKILL) ranks the entry by when it is found dead, not by when it began:
        now, or, if a release asks for the eviction (``released``: the end of its use, which
        this comes after), just before that end, never after it (see "Delete").  That is for an
        entry that stays unused (kept, or awaited): one that does not is garbage once its users
        are dead, as the release of its last use would have left it (deleted), and keeps its
        recorded time: its turn in the first walk, of the entries nobody keeps.  (A later lock
        puts the entry's turn off anyway: its leases are judged when that comes, so that a
        candidate used since its row was written costs a stat only.)"""
        try:
            with self._entry(name) as entry:
                used = self._last_use(entry)
                if used > recorded:
                    return used
                try:
                    fd = locks.open_recorded(os.path.join(entry, "lock"))
                except OSError as e:  # (gone since, or a link planted there: its deletion judges it)
                    if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        raise
                    return used
                try:
                    # Under the lock, taken as a deletion takes it, no hold adds a lease nor sets
                    # the time that this sets, and a use found busy is not ended.
                    if not self._lock_if_unused(fd):
                        return used
                    live, dead = scan_leases(entry, boots=self._boots)
                    if live or not dead:
                        return used
                    if not self._stays_unused(name, entry):
                        return used  # garbage, as the release of its last use would have left it
                    if not reclaim_leases(entry, dead):
                        return used
                    if released is None:
                        self._touch(fd)
                        return os.fstat(fd).st_mtime
                    import math  # an eviction that a release asks for only

                    ended = max(used, math.nextafter(released, -math.inf))
                    self._touch(fd, ended)  # (where this user may not, its row alone records it)
                    return ended
                finally:
                    locks.close(fd)
        except MissError:
            return float("-inf")

    def _stays_unused(self, name: str, entry: str) -> bool:
        """Whether entry ``name``, at ``entry``, stays once nobody uses it: it is marked to keep,
        or processes are on their way to hold it (``awaited``, asked only then)."""
        return os.path.exists(os.path.join(entry, "keep")) or (self.awaited is not None and self.awaited(name))

    @staticmethod
    def _last_use(entry: str) -> float:
        """The time of the last use of the entry at ``entry`` (a path of :meth:`_entry`): its
        lock's."""
        try:
            return os.stat(os.path.join(entry, "lock")).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return float("-inf")

    @classmethod
    def _release_s_end(cls, entry: str) -> float:
        """The end of the use that a release of the entry at ``entry`` has just ended (its lock's
        time set by then): now, by the system's clock.  A file system's times lag that clock by
        up to a tick of their own (4 ms on most disks; a second on ext4 with 128-byte inodes):
        ranked by its lock's time, the entry tied with one that a killed job had held in the same
        tick, and the name decided which of the two the release's eviction took."""
        return max(cls._last_use(entry), time.time())

    def discard(self, path: str) -> None:
        """Delete the tree ``path``, a directory inside this cache's (a population's work
        directory).  It is moved into the trash first, or where it cannot go there, renamed
        aside in its directory (as by :meth:`put_away`): a tree made by another member of a
        group cache, which only that member can delete, is out of the way at once."""
        trash = self._open_own(TRASH)
        try:
            put_away(None, path, trash, _move_to_trash)
        except FileNotFoundError:
            return
        finally:
            os.close(trash)
        self._empty_trash()

    def _open_own(self, sub: str) -> int:
        """A descriptor of the subdirectory ``sub`` of this cache (see :func:`_open_own`)."""
        return _open_own(self.root, sub, self.group)

    def _check_still_there(self) -> None:
        """Raise the :class:`CacheError` that every method raises for a cache whose directory was
        removed (or replaced by something else), where the next step would raise a bare or
        misleading error instead."""
        os.close(self._open_own("."))

    def own_directory(self, sub: str) -> str:
        """A path that names the subdirectory ``sub`` of this cache (created if needed) until
        :meth:`close`, whatever is renamed or swapped in the cache meanwhile: the directory is
        opened as :meth:`_open_own` does and named through ``/proc/self/fd``.  For directories
        that code outside the engine reads and writes by path (the population files)."""
        kept = self._kept_open.get(sub)
        if kept is not None:
            try:
                now = os.stat(os.path.join(self.root, sub), follow_symlinks=False)
                if (now.st_dev, now.st_ino) == kept[1:]:
                    return f"/proc/self/fd/{kept[0]}"
            except FileNotFoundError:
                pass
            # Removed (and maybe made again) since: what is there now is opened instead.
            with _HELD_OPEN_CHANGE:
                if self._kept_open.get(sub) is kept:  # (another thread may have done so already)
                    del self._kept_open[sub]
                    os.close(kept[0])
        root = open_directory(self.root)
        try:
            with making(f"{self.root}/{sub}", self.root):
                self._subdirectories_repaired += make_subdirectory(root, sub, self.modes, repair=self.repair)
        finally:
            os.close(root)
        fd = self._open_own(sub)
        found = os.fstat(fd)
        opened = (fd, found.st_dev, found.st_ino)
        with _HELD_OPEN_CHANGE:
            kept = self._kept_open.setdefault(sub, opened)
        if kept is not opened:  # another thread's came first
            os.close(fd)
        return f"/proc/self/fd/{kept[0]}"

    def _another_kernel_s(self, name: str) -> bool:
        """Whether ``objects/<name>``, no entry in this boot, is an entry of another boot that only
        another machine can judge: this process reaches the cache through a file system that
        another kernel serves (nfs, fuse: not a local disk), and the directory has the marker of
        an entry for one boot, which only a process with a local view of the disk writes.  That
        boot may well be the serving machine's, still running: the entry may be in use there.
        (With a local view, a boot not ours is one of this machine before a reboot.)"""
        objects = self._open_own(OBJECTS)
        try:
            if self._local_view(objects):
                return False
            directory = open_directory(name, dir_fd=objects)
        except (FileNotFoundError, NotADirectoryError):
            return False
        finally:
            os.close(objects)
        try:
            return any(_is_marker(n) and n != MARKER for n in os.listdir(directory))
        finally:
            os.close(directory)

    def _local_view(self, objects: int | None = None) -> bool:
        """Whether this process sees ``objects/`` on a disk of its own machine
        (:data:`~sharedcache.engine.fsutil.LOCAL_DISKS`), where a boot not its own is one of this
        machine before a reboot.  ``objects``: the caller's descriptor of it, if it has one, so
        that what it goes on to read there is in the directory judged here."""
        if objects is not None:
            return file_system_type(objects) in LOCAL_DISKS
        objects = self._open_own(OBJECTS)
        try:
            return self._local_view(objects)
        finally:
            os.close(objects)

    def _judged_elsewhere(self, name: str, action: str) -> CacheError:
        """The refusal to ``action`` ("use", "store") ``name``, whose directory is an entry of
        another boot that only the machine serving the file system can judge
        (:meth:`_another_kernel_s`)."""
        return CacheError(
            f"cannot {action} {name!r} in cache {self.root}: the machine that serves its file "
            "system committed it there, unflushed, for its own boot, which only it can judge; a "
            "use with --keep on that machine makes it usable from here")

    def _to_trash(self, directory: str, name: str, *, later: bool = False) -> str | None:
        """Rename ``directory/name`` into the trash, both directories reached as :meth:`_open_own`
        does: a symlink swapped in for one of them never makes this move anything else; return
        its name there (None: removed in place).  With ``later``, a removal in place that a rename
        cannot be (see "Delete") is finished by the next :meth:`_empty_trash` of this thread,
        after the caller's transaction."""
        source, trash = self._open_own(directory), self._open_own(TRASH)
        try:
            return _move_to_trash(source, name, trash, self._removals_in_place() if later else None)
        finally:
            os.close(source)
            os.close(trash)

    def _rename_back(self, source: str, name: str, target: str, original: str) -> None:
        """Rename ``source/name`` to ``target/original``, where a transaction that failed had
        moved it from: both directories reached as :meth:`_open_own` does."""
        sources, targets = self._open_own(source), self._open_own(target)
        try:
            os.rename(name, original, src_dir_fd=sources, dst_dir_fd=targets)
        finally:
            os.close(sources)
            os.close(targets)

    def _removals_in_place(self) -> list[_RemovalInPlace]:
        """This thread's removals in place that wait for :meth:`_empty_trash`."""
        try:
            return self._local.removals  # type: ignore[no-any-return]  # (a thread-local attribute)
        except AttributeError:
            self._local.removals = []
            return self._local.removals  # type: ignore[no-any-return]

    def _empty_trash(self, *, thorough: bool = False) -> tuple[int, int]:
        """Delete whatever is in the trash; return how many trees were removed, and how many
        could not be (gc reports them).  A tree that
        another member of a group cache committed can only be deleted by that member (its
        directories are read-only): it stays until that member's next command here.

        A tree that cannot be removed now for any other reason (a member who keeps making files
        in a directory of it, an I/O error) stays too: what put it there is done, and the next
        command that empties the trash tries again.  So does an entry in use that a member
        renamed there (:meth:`_used_in_trash`), at any depth, with the directories that hold
        it, until its users end: the walk that removes the rest of the tree passes over it.
        In a private cache, where nobody else renames anything there, only each tree itself is
        looked at: the entry of a release whose transaction is not over, its lock held, stays,
        since a transaction that fails renames it back (see "Delete").

        Only directories are put in the trash, and a directory's link count is 2 plus its
        subdirectories on the usual file systems (ext4, xfs, tmpfs): a count of 2 says it is
        empty without opening it, which every release would otherwise do (and does on btrfs,
        whose directories count 1 link whatever they hold).  gc (``thorough``)
        looks inside whatever the count, for anything else planted there.

        The removals in place that this thread's transactions left (:meth:`_to_trash`) are
        finished first."""
        removals = self._removals_in_place()
        while removals:
            removals.pop().finish()
        if not thorough:
            try:
                status = os.stat(self._trash, follow_symlinks=False)
            except FileNotFoundError:
                status = None  # (missing: _open_own below says so)
            if status is not None and stat.S_ISDIR(status.st_mode) and status.st_nlink == 2:
                return 0, 0
        removed = left = 0
        alive: dict[str, bool] = {}

        def in_use(directory: int) -> bool:
            return self._used_in_trash(directory, alive)

        trash = self._open_own(TRASH)
        try:
            for tree in os.listdir(trash):
                try:
                    # An entry in use, wherever in the tree, stays with what holds it until its
                    # users end: the next command then removes it.
                    # (Only a member of a group cache can put an entry in use here.)
                    if not self.shared and self._tree_in_use(trash, tree, alive):
                        continue
                    if not remove_tree(tree, dir_fd=trash, spare=in_use if self.shared else None):
                        continue
                except OSError:  # PermissionError: another member's
                    left += 1
                    continue
                removed += 1
        finally:
            os.close(trash)
        if removed:
            try:
                from .index import make_reserve  # (the index is open already: this imports nothing)
            except ImportError:  # (but an import fails at the interpreter's exit: a use() finalised then)
                return removed, left  # the next command that frees room makes the reserve again
            make_reserve(self.root, self.modes.file)  # the room just made keeps the index usable on a full disk
        return removed, left

    def _tree_in_use(self, trash: int, tree: str, alive: dict[str, bool]) -> bool:
        """Whether the tree ``tree`` of the trash open as ``trash`` is an entry whose lock is held:
        a release's, whose transaction is not over (see :meth:`_used_in_trash`).  Its leases are
        not looked at: in a private cache nobody else puts an entry there, and a store killed
        before its commit left the live lease of its job's holder in its stage, which is no use.
        Once its lock is found free it stays free: a deletion that is undone renames the entry
        away from that name, and none brings one there again."""
        try:
            directory = open_directory(tree, dir_fd=trash)
        except OSError:
            return False  # gone, or no directory: the removal says what to do
        try:
            return self._used_in_trash(directory, alive, leases=False)
        finally:
            os.close(directory)

    def _used_in_trash(self, directory: int, alive: dict[str, bool], *, leases: bool = True) -> bool:
        """Whether the directory open as ``directory``, in the trash at any depth, is an entry in
        use: its lock held, or (with ``leases``) a lease of a live owner in it.  No deletion puts one there (it
        takes the lock and looks at the leases first; the lock of a release's entry it holds
        until its transaction ends), but any member of a group cache may rename
        an entry there, or a directory holding entries (one of hers, ``objects`` itself).  Only
        an entry of this boot has users: a stage is none, though the lease of its store's holder
        is in it (a store killed before its commit, whose job lives on, left it for gc)."""
        tree = f"/proc/self/fd/{directory}"
        if committed(tree) is None:
            return False
        try:
            fd = locks.open_recorded("lock", dir_fd=directory)
        except OSError:
            fd = -1  # none (what a member planted there): the leases say
        if fd >= 0:
            try:
                if not locks.try_lock(fd, locks.EXCLUSIVE):
                    return True
            finally:
                locks.close(fd)
        if not leases:
            return False
        try:
            return any_live_lease(tree, alive, self._boots)
        except OSError:
            return False  # no leases to read there

    # -- inspection ------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every committed entry, with its size, times, and whether it is in use now."""
        rows = self._db().rows()
        alive: dict[str, bool] = {}
        return [entry for row in rows if (entry := self._describe(row, alive)) is not None]

    def info(self, name: str) -> Entry:
        """What :meth:`entries` says of entry ``name``; MissError if there is none."""
        row = self._db().row(check_name(name))
        entry = None if row is None else self._describe(row, {})
        if entry is None:
            raise MissError(f"no entry {name!r} in cache {self.root}")
        return entry

    def _describe(self, row: Row, alive: dict[str, bool]) -> Entry | None:
        """An index row completed by what its entry's directory says now; None if the directory
        is no entry now (one of a boot before, or gone with a crashed delete: gc drops the row),
        or this process cannot name it (see "Names")."""
        name, size, created, last_used, keep, meta = row
        if not writes_as_utf8(name):
            return None
        if self.shared:
            try:
                with self._entry(name) as entry:
                    return self._described(row, entry, alive)
            except MissError:  # a link where the entry was (a member's): nothing of it is read
                return Entry(name, size, created, last_used, bool(keep), meta, False, ())
        return self._described(row, f"{self._objects}/{name}", alive)  # (os.path.join: a tenth more)

    def _described(self, row: Row, entry: str, alive: dict[str, bool]) -> Entry | None:
        if committed(entry) is None:
            return None
        name, size, created, last_used, keep, meta = row
        owners = scan_lease_owners(entry, alive, self._boots)[0]
        locked, used = self._probe(entry)
        keep = bool(keep) or os.path.exists(f"{entry}/keep")
        return Entry(name, size, created, max(last_used, used), keep, meta, bool(owners) or locked,
                     tuple(owner.pid for owner in owners), tuple(str(owner) for owner in owners),
                     DAMAGE if _damaged(entry) else None)

    def names(self) -> set[str]:
        """The names of the entries the index accounts for: after :meth:`gc`, every entry."""
        return self._db().names()

    def __contains__(self, name: str) -> bool:
        try:
            check_name(name)
        except UsageError:
            return False
        try:
            with self._entry(name) as entry:
                return committed(entry) is not None
        except MissError:
            return False

    @staticmethod
    def _probe(entry: str) -> tuple[bool, float]:
        """Whether some process holds the entry's lock (a reader or holder, or a storer
        committing), and the time of its last use."""
        try:
            fd = locks.open_recorded(f"{entry}/lock")
        except (FileNotFoundError, NotADirectoryError):
            return False, float("-inf")
        except PermissionError:  # (made unreadable by its owner): whether it is held is unknown
            return True, float("-inf")
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            return False, float("-inf")  # a link in its place: a damaged entry, which no use can take
        try:
            return not locks.try_lock(fd, locks.EXCLUSIVE), os.fstat(fd).st_mtime
        finally:
            locks.close(fd)

    # -- garbage collection ----------------------------------------------------------------------

    def _stage_guard(self) -> int:
        """Open ``stage.lock``; a repairing open (gc) puts anything found there but a file it may
        read out of the way (:meth:`put_away`) and makes a new one."""
        root = self._open_own(".")
        guard = f"/proc/self/fd/{root}/stage.lock"  # (named so: a refusal names the cache)
        try:
            try:
                fd = locks.open_lock_file(guard, mode=self.modes.file)
            except CacheError:
                if not self.repair:
                    raise
                self.put_away(".", "stage.lock")
                fd = locks.open_lock_file(guard, mode=self.modes.file)
        except BaseException:
            os.close(root)
            raise
        try:
            os.close(root)
        except BaseException:  # (Ctrl-C as the close returned: the caller never gets the descriptor)
            locks.close(fd)
            raise
        return fd

    def put_away(self, sub: str, name: str) -> None:
        """Move what is at ``name``, in this cache's directory ``sub`` (reached as :meth:`_open_own`
        does), into the trash; what cannot go there (another member's directory, or anything while the trash is
        not the cache's own) is renamed aside where it is (:func:`~.layout.put_away`), and its
        owner's next gc moves it into the trash (:meth:`trash_what_was_set_aside`; in ``objects/``,
        as it does any directory there that is no entry).  For what a
        member planted at a name the cache needs: the name is free either way."""
        directory = self._open_own(sub)
        self._names_put_away += 1
        try:
            try:
                trash: int | None = self._open_own(TRASH)
            except CacheError:  # (not the cache's own: a repairing open makes a new one)
                trash = None
            try:
                put_away(directory, name, trash, _move_to_trash)
            finally:
                if trash is not None:
                    os.close(trash)
        finally:
            os.close(directory)

    def _sweep(self, left_alone: list[str] | None = None) -> int:
        """Remove the staging directories of dead processes, if nobody is creating one now; what
        another member owns there and this user may not move is left, said in ``left_alone``
        (gc's report) if given.

        Under ``stage.lock`` they are only moved into the trash, then deleted with it once the
        lock is released: a killed population may leave a million files, and every store waits
        for ``stage.lock`` to create its staging directory."""
        guard = self._stage_guard()
        try:
            if not locks.try_lock(guard, locks.EXCLUSIVE):
                return 0
            removed = 0
            stages, trash = self._open_own(STAGE), self._open_own(TRASH)
            try:
                for stage in os.listdir(stages):
                    removed += self._trash_if_abandoned(stages, stage, trash, left_alone)
            finally:
                os.close(stages)
                os.close(trash)
        finally:
            locks.close(guard)
        if removed:
            self._empty_trash()
        return removed

    def _trash_if_abandoned(self, stages: int, stage: str, trash: int, left_alone: list[str] | None) -> int:
        try:
            fd = locks.open_recorded(f"{stage}/lock", dir_fd=stages)
        except OSError as e:
            raise_if_over_limit(e)
            fd = None  # created under stage.lock, so a lock-less one was abandoned
        try:
            if fd is not None and not locks.try_lock(fd, locks.EXCLUSIVE):
                return 0
            _move_to_trash(stages, stage, trash)
            return 1
        except FileNotFoundError:
            return 0  # committed or removed by its owner since the listing (no stage is made now)
        except OSError as e:  # another member's, that only she (or root) may move; or a mount point
            if left_alone is None:
                raise
            left_alone.append(self._left_alone(STAGE, stage, e))
            return 0
        finally:
            if fd is not None:
                locks.close(fd)

    def gc(self) -> GcReport:
        """Clean what crashed processes left, reclaim dead leases, and repair the accounting.

        Removes abandoned staging directories, the trash (counting what of it stays:
        :attr:`GcReport.trash_left`), and what processes that ended left
        under temporary names (an hour old: see :func:`~sharedcache.engine.fsutil.remove_leftovers`);
        reconciles ``objects/`` with the index (adopts committed directories that lost their row,
        removes directories without a valid marker and rows without a directory); removes the
        leases of dead processes; deletes unused entries not marked to keep (nor ``awaited``),
        and unused entries whose data or lock is gone (:func:`_damaged`); recomputes the
        accounted size; and evicts down to the budget (:attr:`GcReport.entries_evicted`).

        What only a repairing open repairs (see ``repair``: a subdirectory or ``stage.lock`` that
        is not the cache's own) fails the gc of an object opened without it, in a line that says
        so (the damage's own line says to run gc, which this gc is).
        """
        read_umask_again()
        try:
            return self._collect()
        except locks.Damage as e:
            if self.repair:
                raise
            raise CacheError(f"{e.damage}; only a repairing gc repairs it: FsCache(root, repair=True).gc(), "
                             "as sc gc does") from None

    def _collect(self) -> GcReport:
        """:meth:`gc`, but for what it says of damage left to a repairing open."""
        # Before the probe opens the directory by its path: its bare error named no cache.
        self._check_still_there()
        try:
            check_locks(self.root, "cache.info")  # (its marker, where no inode is left for a probe)
        except OSError as e:
            self._raise_if_unwritable("a probe of its file locks", e)
            raise
        report = GcReport()
        try:
            if not self._db().intact():
                raise CacheError("damaged index")
        except _IndexOutOfReach:
            raise
        except CacheError:
            self._set_index_aside()
            report.index_rebuilt = True
        self.trash_what_was_set_aside()
        report.leftovers_removed = self._remove_leftovers()
        report.stages_removed = self._sweep(report.left_alone)
        with self._transaction() as db:
            # (Before anything changes, as a release reads them.)
            rows, budget = db.names(), self._budget_repaired(report)
            objects = self._open_own(OBJECTS)
            try:
                on_disk = set(os.listdir(objects))
            finally:
                os.close(objects)
            foreign = {name for name in on_disk | rows if not writes_as_utf8(name)}
            report.names_left_alone = len(foreign & on_disk)  # (a row's name spelt another way on disk)
            for name in on_disk - rows - foreign:
                try:
                    if self._adopt(db, name):
                        report.orphans_adopted += 1
                    elif self._another_kernel_s(name):
                        continue  # not ours to judge (see _another_kernel_s)
                    elif self._remove_orphan(db, name, report.left_alone):
                        report.orphans_removed += 1
                except FileNotFoundError:
                    continue  # removed by its owner since the listing: nothing to do
                except PermissionError:  # a directory of another member's that this user may not open
                    report.left_alone.append(self._left_alone(OBJECTS, name))
            for name in rows - on_disk - foreign:
                db.forget(name)
                report.rows_dropped += 1
            alive: dict[str, bool] = {}
            for name, keep in db.names_and_keep():
                if name in foreign:
                    continue
                try:
                    with self._entry(name) as entry:
                        users, dead = scan_leases(entry, alive, self._boots)
                        report.leases_reclaimed += self._reclaim(entry, dead)
                        if not users:
                            # A kept entry has entry.json: without a marker, it is what a crashed
                            # removal in place left (see "Delete"), whatever its row and flag say;
                            # one whose data or lock is gone is nobody's to keep either.
                            leftover = ((_markerless(entry) and not self._another_kernel_s(name))
                                        or (committed(entry) is not None and _damaged(entry)))
                            if leftover or not keep:
                                report.entries_deleted += self._retire(db, name, unless_kept=not leftover,
                                                                       entry=entry, left_alone=report.left_alone)
                except MissError:
                    continue  # a link where the entry was (a group member's): not ours to follow
                except FileNotFoundError:
                    continue  # removed by its owner since the listing (its row stays until the next gc)
                except PermissionError:  # a directory of another member's that this user may not open
                    report.left_alone.append(self._left_alone(OBJECTS, name))
            actual = db.sum_of_sizes()
            if actual != db.total():
                report.accounting_fixed = 1
                db.set_total(actual)
            counted = db.names()
            self._restore_budget(db, budget)
            report.entries_evicted = len(counted - db.names())
        report.trash_removed, report.trash_left = self._empty_trash(thorough=True)
        # (What this object's opening and this gc did, reported once.)
        report.subdirectories_repaired, self._subdirectories_repaired = self._subdirectories_repaired, 0
        report.put_away, self._names_put_away = self._names_put_away, 0
        return report

    def _remove_orphan(self, db: Index, name: str, left_alone: list[str]) -> bool:
        """Within a transaction: move ``objects/<name>``, which no row accounts for and which is
        no entry to adopt, into the trash, unless a use holds it (its lock, or a lease of a live
        owner: a directory whose marker names another name is still used through that name by
        whoever committed it), or another member owns it and this user may not move it (said in
        ``left_alone``); return whether it was."""
        try:
            with self._entry(name) as entry:
                return self._retire(db, name, entry=entry, left_alone=left_alone)
        except MissError:  # a link (a member's): nothing any use reaches through it
            self._to_trash(OBJECTS, name, later=True)
            return True

    def _left_alone(self, sub: str, name: str, error: OSError | None = None) -> str:
        """What gc says of ``name`` in this cache's directory ``sub``, which it could not move
        (``error``) or open: its path and why; of another member's, its owner, who alone may
        remove it."""
        path = os.path.join(self.root, sub, name)
        if error is not None and not isinstance(error, PermissionError):
            reason = str(error) if error.errno is None else os.strerror(error.errno)
            return f"{path}: left alone: it cannot be moved into the trash ({reason})"
        return f"{path}: left alone: it belongs to {self._owner_of(sub, name)}, who alone may move or remove it"

    def _owner_of(self, sub: str, name: str) -> str:
        """The owner of ``name`` in this cache's directory ``sub``, as messages name a user."""
        try:
            return owner_shown(os.stat(os.path.join(self.root, sub, name), follow_symlinks=False).st_uid)
        except OSError:
            return "another member"  # (removed by its owner meanwhile)

    def _budget_repaired(self, report: GcReport) -> int | None:
        """Within gc's transaction: the budget; a damaged one (:class:`DamagedBudget`) is put
        away (:meth:`put_away`: a member's directory there only she may move into the trash),
        which leaves the cache unlimited until a budget is set again (under the index's write
        lock, as gc holds it: none is set meanwhile)."""
        try:
            return self.max_size
        except DamagedBudget:
            self.put_away(".", BUDGET)
            report.damaged_budget_removed = True
            return None

    def _remove_leftovers(self) -> int:
        """Remove what processes that ended left under temporary names (see
        :func:`~sharedcache.engine.fsutil.remove_leftovers`) in the cache's directory (``stage.lock``
        and the subdirectories being made, the budget and marker being written) and, for a group
        cache, made as the cache's own directory beside it."""
        root = self._open_own(".")
        try:
            removed = remove_leftovers(f"/proc/self/fd/{root}")
        finally:
            os.close(root)
        if self.shared:
            base, name = os.path.split(self.root)
            removed += remove_leftovers(base, prefix=f".{name}.tmp-")
        return removed

    def _set_index_aside(self) -> None:
        """Move an unusable index, and the files beside it, into the trash; the next connection
        creates a new one, and gc then adopts every committed entry from its directory.

        What another member of a group cache made at one of those names and cannot move there
        is renamed aside (:meth:`put_away`)."""
        self._local.db = None
        for name in (INDEX + suffix for suffix in ("", *_INDEX_SIDE_FILES)):
            try:
                self.put_away(".", name)
            except FileNotFoundError:
                pass

    def trash_what_was_set_aside(self, sub: str = ".") -> None:
        """Move into the trash what :meth:`put_away` renamed aside in this cache's directory
        ``sub``, where this user may."""
        directory = self._open_own(sub)
        try:
            names = [name for name in os.listdir(directory) if name.startswith(ASIDE)]
        finally:
            os.close(directory)
        for name in names:
            try:
                self._to_trash(sub, name)
            except (FileNotFoundError, PermissionError):
                pass  # moved by another gc meanwhile, or another member's

    def _adopt(self, db: Index, name: str, *, room: bool = False) -> bool:
        """Within a transaction: give a committed directory that has no row its row back.  With
        ``room``, first evict what the budget needs for it, as a store does for its own entry (a
        store that finds its name committed by one killed before its commit); gc evicts once it
        has adopted them all."""
        try:
            with self._entry(name) as entry:
                return self._adopt_from(db, name, entry, room=room)
        except MissError:
            return False  # a link (a member's): moved to the trash by the caller

    def _adopt_from(self, db: Index, name: str, entry: str, *, room: bool = False) -> bool:
        found = committed(entry)
        if found is None:
            return False  # no marker valid in this boot: a leftover, not an entry
        try:
            import json

            marker = json.loads(read_control(os.path.join(entry, found), 1 << 16) or b"")
            # (A lock lost is no reason to drop the entry: live uses may hold it, which the
            # deletion of a damaged entry spares.)
            # (A hidden name is none a store gives: a directory set aside, whatever its marker says.)
            if marker["name"] != name or name.startswith(".") or _lost(entry, "data", stat.S_ISDIR):
                return False
            size, created = int(marker["size"]), float(marker["created"])
            meta = self._meta(entry)
        except OSError as e:
            raise_if_over_limit(e)  # (else the entry, taken for a leftover, would be removed)
            return False
        except (ValueError, KeyError, TypeError):
            return False
        keep = os.path.exists(os.path.join(entry, "keep"))
        last_used = max(created, self._last_use(entry))
        if room:  # (without its row, it is no candidate for this eviction)
            self._make_room(db, name, size, strict=False)
        db.add(name, size, created, last_used, keep, meta)
        return True
