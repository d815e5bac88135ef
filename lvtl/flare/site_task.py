"""Site script run by NVFlare's ScriptRunner: the Client API loop of :mod:`lvtl.flare.site`."""

from lvtl.flare.site import main

if __name__ == "__main__":
    main()
