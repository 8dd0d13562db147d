"""MemKV for sglang: the HiCache storage backend (`memkv_sglang.backend`)."""
