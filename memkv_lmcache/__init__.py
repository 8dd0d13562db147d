"""MemKV for LMCache: the storage plugin (`memkv_lmcache.backend`) that vLLM
reaches through LMCache, and the L2 adapter for LMCache's multi-process
server (`memkv_lmcache.mp_adapter`)."""
