"""Settings: every knob of shared-cache, its default, its validation, and where it is read.

Settings are values built at the edge (the command line, :func:`sharedcache.use`) and passed down
as arguments; nothing below the edge reads the environment, with one exception: curl's proxy
variables (``http_proxy``...), which :mod:`sharedcache.loaders.transport` reads for each URL
when no proxy chain is set, as curl and requests do, so that Python callers get them too.

* :mod:`~sharedcache.config.settings`: the values (:class:`~.settings.FetchPolicy` for how data
  is fetched, proxies and offline included; the base directories), their defaults and
  validation, and the environment variables that set them.  A new setting lives there.
* :mod:`~sharedcache.config.files`: the config files (site, user, ``SC_CONFIG``), their
  ``key = value`` format, and how they layer with the environment and the options.  A new
  setting gets its key there.
"""
