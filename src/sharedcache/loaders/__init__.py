"""Loaders: the words of a recipe, and running a recipe into a directory in one pass.

* :mod:`~.words`: a recipe as text (its words, identity and default name), without loading any
  loader: all the warm path needs;
* :mod:`~.streams`: the stream primitives every loader reads and produces;
* :mod:`~.protocol`: what a loader is (source, transform, unpacker) and what it may use;
* :mod:`~.registry`: the words registered as entry points, and parsing words into a recipe;
* :mod:`~.pipeline`: running a recipe (reading thread, checksums, resume and takeover);
* sources, one module per family: :mod:`~.http` (with :mod:`~.ranged` for several
  connections), :mod:`~.local` (``file:``), :mod:`~.dirac`;
* transforms: :mod:`~.transforms` (the words: checksums, decompressors, unpackers),
  :mod:`~.codecs` (decompression, bomb limits) and :mod:`~.archives` (safe tar and zip
  unpacking).

A new source is a module here, registered in pyproject.toml under ``sharedcache.loaders``.
"""
