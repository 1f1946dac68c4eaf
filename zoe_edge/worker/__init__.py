"""The child process that owns ``llama_cpp.Llama`` (``main``, ``engine``) and the daemon's handle on it (``client``)."""
