"""MemKV: a shared, durable KV-cache memory tier for LLM inference.

`Client` talks to a cluster of MemKV nodes; `memkv server` runs a node.
"""

from .client import Client
from .errors import (AuthError, BatchError, ChecksumError, ConfigError, ConnectionFailed, KeyTooLong, LicenseError,
                     MemKVError, ProtocolError, ServerError)

__version__ = "0.1.0"

__all__ = ["Client", "MemKVError", "ConfigError", "LicenseError", "AuthError", "ProtocolError", "ConnectionFailed",
           "ChecksumError", "KeyTooLong", "ServerError", "BatchError", "__version__"]
