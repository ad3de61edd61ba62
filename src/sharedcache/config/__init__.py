"""Settings: every knob of shared-cache, its default, its validation, and where it is read.

Settings are values built at the edge (the command line, :func:`sharedcache.use`) and passed down
as arguments; nothing below the edge reads the environment.

* :mod:`~sharedcache.config.settings`: the values (:class:`~.settings.FetchPolicy` for how data
  is fetched; the base directories), their defaults and validation, and the environment
  variables that set them.  A new setting lives there.
"""
