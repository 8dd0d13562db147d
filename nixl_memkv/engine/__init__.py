"""A real inference engine (vLLM on CPU) serving through LMCache's
multi-process server with MemKV as its L2 tier: the model it serves, the
processes it takes, and the requests that measure it. Used by
`memkv demo --engine vllm`, scripts/bench_ttft.py and tests/vllm."""
