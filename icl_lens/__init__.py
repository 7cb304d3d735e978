from icl_lens._version import __version__
