"""Repositories: shared data directories, populated once from a recipe and held by leases.

* :mod:`~.bases`: base directories, their caches and free space, and the links;
* :mod:`~.population`: one population for all (the population lock, waiting, takeover) and
  :class:`~.population.Population`, whose ``fill()`` is where the data comes from;
* :mod:`~.records`: the status and error records of populations;
* :mod:`~.repositories`: :class:`~.repositories.Repositories`, the facade the command line uses
  (acquire, release, locate, list, gc), and :func:`~.repositories.use` for Python callers.

A repository is an :class:`~sharedcache.engine.fscache.FsCache` entry of the cache that lives in a base
directory (``/tmp``, ``/var/tmp``, or what the user names), made visible at ``<base>/.shared-cache-<uid>/<name>``.
The entry's metadata is the recipe's identity, so a name cannot be reused for another recipe.
Each user holds a lease (:mod:`sharedcache.engine.leases`); the last release deletes the repository
unless it is kept, and then it stays under the base directory's LRU budget.

Layout in a base directory
==========================
Each user has a directory of their own in a base (see :mod:`~.bases` for the checks)::

    <base>/.shared-cache-<uid>/<name>          symlink to .cache/objects/<name>/data: the path printed
    <base>/.shared-cache-<uid>/.cache/         the user's private FsCache (see sharedcache.engine)
    <cache>/populate/<name>.lock    held exclusively by the process populating <name> (any
                                    held, or any status record, keeps a cache of format 2 so:
                                    see sharedcache.engine.fscache)
    <cache>/populate/<name>.waiting held shared by the uses waiting for (or making) <name>
    <cache>/populate/<name>.json    its status: pid (and its owner key), reserved size, bytes so far
    <cache>/populate/<name>.error   the last failed population: time and message
    <cache>/populate/<name>.work/<uid>/   private, kept across a takeover by the same user
                                          (partial download)

With ``--group GID`` the cache is ``<base>/.shared-cache-g<GID>/``, and the user's link points
there (``../.shared-cache-g<GID>/objects/<name>/data``).

Acquire (``sc --use``, :func:`use`)
===================================
1. In each candidate base that has a cache, try to hold ``<name>`` (with the recipe's identity:
   another recipe under that name is refused).  Held: go to 5.  Held nowhere: make the fetch
   policy, so that a bad setting (curl's proxy variables among them, for a recipe that
   downloads over HTTP) fails the use before anything is made in any cache.  A base where
   ``<name>`` is being populated is chosen: looking for one, take ``<name>.waiting`` shared
   first (as in step 2), and keep it where a population is found.  Otherwise the first base
   whose free space, less the space reserved by the populations in progress there (but for a
   reservation past the size of its file system, which none can fill: gc names it), is at least
   the requested size is chosen; the unused repositories of its cache are room too, and under
   its reservations lock the least recently used are evicted for what the free space lacks, if
   they hold that much (none is evicted for room they cannot make up).  A base with no block or
   no inode left comes after all the others.
2. In the chosen base, take ``<name>.waiting`` shared (made with the lock files' guards and
   modes; taken, check that its path still names it, else take it again: it is removed when
   nobody holds it), and hold it until this use has its lease or fails; then remove it unless
   another holds it (gc removes one that a killed waiter left).  It says that a use is
   on its way to the repository: the release of the last use of the repository that a
   population makes, which may come before its waiters see the population lock free, leaves it
   for them (see Release), instead of deleting it under them (each then made it again).  Then
   loop: try to hold (held: go to 5); take the population lock of ``<name>`` without waiting;
   if another process has it, wait for it (saying whom we wait for and how far it has got),
   then loop; if this very thread has it (a signal handler's use, run in the thread whose
   population it interrupted, which cannot go on until the handler returns), refuse the use,
   a usage error, rather than wait for itself.  After taking it, check that the lock file is still the one named
   by its path (gc, and the removal of a deleted repository's link, remove lock files they
   hold), else loop.
3. Holding the population lock, try to hold once more (the previous holder may have
   finished).  If instead a population failed after this use asked for the repository (at the
   start of step 2), its error record is newer than the asking: raise that error, so that one
   failure is not repeated by every use that asked while it was under way, whether it had to
   wait for the lock or came to it just as the failure released it.  A use that asks after the
   failure tries afresh (the error may have been a passing one), and so does one that sees the
   recipe's sources otherwise than the failure was seen, by the namespaces its record names: for a
   recipe with a ``file:`` source, from another mount namespace (a container's files: another
   file at the path, or none), and, for a recipe that reads over the network, from another
   network namespace (a container's: no network, or another network's bytes for the source);
   not from another mount namespace for a URL, which would make the jobs of containers with
   mounts of their own each repeat a failing origin's retries (``population.seen_elsewhere``);
   and so does any use when the failure was
   a refusal of the populator's credentials (a 401 or 403 of the URL's origin, a proxy's 407,
   a ``file:`` source refused to its uid and groups, from every source of the recipe: one that
   failed otherwise fails every use alike; each use sends its own, and the record holds nothing
   of them that could tell them apart, since the members of a group cache read it).  If the holder died, there is
   no record: we take over.  A use that could not make ``<name>.waiting`` in step 2 (a full
   file system) tries once more, without waiting, now that the population lock's making may
   have made room: the file is then there while it populates, and a waiter that cannot make
   files there (full, or read-only to it) opens it.
4. Populate: write the status file (this reserves the space: with a size, under the reservations
   lock, once the room is checked again as in step 1), fill a store of ``<name>`` with the
   recipe (``work`` survives us for a takeover; it is private to its user, and opened once made or
   kept for the same recipe and used through that descriptor, whatever another member of a group
   cache puts at its name: a work directory of hers, where this user may not make her own, is put
   away as any other that is not this recipe's, into the trash or renamed aside), commit it with a
   lease for the owner in the same transaction, then remove the status and the work directory
   (what cannot be removed is left to gc: the use is committed).  On failure write the error
   record (naming this process's network and mount namespaces, for step 3), then discard the
   work directory (a process killed between them has told its waiters), unless a download that
   failed (an outage longer than its retries) left a partial download there, which the next use
   goes on from as a takeover does; and raise (a file system
   full with nothing left to evict, where this use chose the base, has the use choose again
   without it and the candidates on its file system); unless the
   failure is this process's own (its settings, its credentials, its limits), which the waiters,
   who have theirs, are not told: no record, and the work directory is kept for a takeover only
   after a limit (a server's refusal of its credentials is recorded as such, for the listing,
   and the waiters pass over it: see step 3); so is an error of the system that sc did not make
   one of its own, and memory refused.  A fault of sc's own (an internal error) is recorded as the recipe's failure is:
   each waiter would meet it again.  Release the population lock.  A process killed here releases the lock with
   its death; a waiter takes over at step 3.  A child that another thread of the process
   forked (a worker pool) gave up its copy of the population lock, of the stage's and of the
   reservations lock as it started (see :mod:`sharedcache.engine.locks`), so it never holds
   them past that death.
5. Make sure the user's link ``<name>`` points to the entry, and return its path.  A use whose
   link cannot be made is released before the error is raised: no failure leaks a lease.
   :func:`use` also reads the entry (its lock taken shared) for the length of its block: a child
   that the block's thread forks keeps that read, and holds the entry for as long as it lives;
   one that another thread forks gives it up as it starts, and leaves the last release free to
   delete the entry.  Ctrl-C in the main thread is deferred from the making of the lease until
   :func:`use` holds it in its ``try``, and during its release, then raised (see
   :class:`~sharedcache.engine.leases.InterruptGuard`): it leaks no use, and reaches the caller.
   ``sc --use`` and ``sc run`` hold back SIGTERM and SIGHUP with it, blocked from the making of
   the lease (or the end of the fill) until the use is in hand, save while the population's
   commit waits for a busy index to begin its transaction, where one that came acts, the
   population undoing itself (held on, it waited up to ``--timeout``): ``sc run`` then releases it
   before they end it (by their exception, raised there), and for ``sc --use``
   they, and Ctrl-C, are moot once the output can take the path, and end its wait for an output
   that cannot (a pipe nobody reads), the use released first, whether they come during that wait
   or came before it.
   A use that another thread leaves (a generator holding its block, closed or dropped there) is
   released there, and the main thread's Ctrl-C is raised at once, as outside a use.

A use that starts while an acquire or a release of its own thread is under way is a signal
handler's, run in the thread whose step it interrupted, which goes on only once the handler
returns.  It opens caches of its own (:class:`~.repositories.Repositories`): that step's are in
its state, their connection to an index perhaps in a transaction, their deadline set, which the
handler's use would share, rolling the transaction back and clearing the deadline.  Where it
would wait for what that step holds (the index's write lock, an entry's lock, a population
lock, the reservations lock), it is refused at once, a usage error, rather than wait for itself;
its release, refused so, removes its lease alone, and the repository stays, unused, for the next
release or gc.

Release (``sc --unuse``) drops one lease of the owner; a budget it gives (``--max-size``) is set
first, while that lease still spares the entry from eviction (``none`` lifts the stored budget
then, and the release has nothing to evict down to).  The engine deletes the entry in the
same transaction if no live use remains, it is not kept, and nobody holds ``<name>.waiting``
(the cache's ``awaited``, tried exclusively without waiting under the entry's lock: a waiter
adds its lease under that lock before it lets the file go, so the look is final).  An entry left
for its waiters is deleted by the last release of theirs; a waiter killed first lets the file go
with its death, and the release of the next use, or gc, deletes it.  The link is then removed
under the population lock (checked as in step 2), so it never disappears under a population
that is recreating it; still holding it, the release removes the lock file too, unless a
population's status, work directory or error record is there (gc cleans those under it, and an
error record keeps its lock file, as gc keeps it).  Ctrl-C in ``sc --unuse`` is deferred from the
removal of the lease on, and is then moot: the release is the outcome (one before it releases
nothing).

An eviction deletes kept repositories on behalf of another: the store that needs their room
(step 4), the budget that a use or a release gives, or that a release restores.  The engine
names what it evicted (:meth:`~sharedcache.engine.fscache.FsCache.take_evicted`), and the use or
release, at its end, succeeded or not, removes their links (and lock files) as a release
removes its own.  Only this user's links are in reach: in a group cache, another member's link
of a repository evicted by this user stays until that member's gc, or next use of the name,
which makes it anew.

``sc gc --evict NAME`` deletes the repository ``NAME`` of each candidate now, kept or not, as an
eviction deletes it (the engine's ``remove`` with ``unless_awaited``): never one in use, nor one
left for its waiters, each refused in a line of its own while the other names go on.  Its link
goes as a release removes its own, before the rest of gc, which removes a link that could not
go then (its lock file planted).  In a group cache a member evicts another's repository as she
may delete it; that member's link goes at her next gc, or use of the name.

gc leaves an unused repository that is awaited as a release does, and no eviction (gc's
restoring the budget, a store's, a use's or a release's) deletes one either; gc removes a
``<name>.waiting`` that nobody holds (a killed waiter's).  It removes what a population left
behind (its status, the temporary files of its records, its work directory, an expired error
record and then the lock file itself) only under that population lock, checked as in step 2: a
lock taken on a file that another gc removed in the meantime locks nothing, and the name's
files may by then belong to a population holding the new lock file.  What a member of a group
cache put at the name of a lock file (its reservations lock or a name's), which no population
can open (a FIFO, a directory, a file this user may not read), gc puts away
(:meth:`~sharedcache.engine.fscache.FsCache.put_away`): the next population makes the lock
again.  The links of deleted repositories it then removes as a release does, lock files
included.  It deletes, once unused, a repository whose record of its recipe is lost (missing,
empty, or NUL bytes): no use or release can name it any more.
"""
