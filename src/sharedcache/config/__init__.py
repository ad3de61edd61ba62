"""Settings: every knob of shared-cache, its default, its validation, and where it is read.

Settings are values built at the edge (the command line, :func:`sharedcache.use`) and passed down
as arguments; nothing below the edge reads the environment, with one exception: curl's proxy
variables (``http_proxy``...), which :mod:`sharedcache.loaders.transport` reads for each URL
when no proxy chain is set, as curl and requests do, so that Python callers get them too.

* :mod:`~sharedcache.config.files`: every setting's key (:data:`~.files.SETTINGS`), the config
  files (site, user, ``SC_CONFIG``), their ``key = value`` format, and how they layer with the
  environment and the options.  A new setting gets its key there.  On the warm path.
* :mod:`~sharedcache.config.settings`: the fetch settings as values
  (:class:`~.settings.FetchPolicy` for how data is fetched, proxies, credentials and offline
  included), their defaults and validation.  A new setting of how to fetch lives there.  Made
  on a miss only: a use of ready data fetches nothing.

The base directories, a setting that says where repositories live, are turned into paths by
:func:`sharedcache.repository.bases.base_directories`.
"""
