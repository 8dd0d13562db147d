"""Exception types shared by the node, the client and every plugin.

Each error names what went wrong and how to fix it; callers catch the family
(`MemKVError`) or a precise kind.
"""


class MemKVError(Exception):
    """Base of every MemKV error."""


class ConfigError(MemKVError, ValueError):
    """A configuration value is missing or malformed (names the variable and the accepted form)."""


class LicenseError(MemKVError):
    """The license file is missing, tampered with, expired or not trusted."""


class AuthError(MemKVError):
    """The node rejected our auth key, or could not prove it holds the same key."""


class ProtocolError(MemKVError):
    """A frame broke the wire protocol (bad MAC, bad sequence, bad length)."""


class ConnectionFailed(MemKVError, ConnectionError):
    """A node could not be reached, closed the connection, or timed out."""


class ChecksumError(MemKVError):
    """Bytes failed end-to-end checksum verification; they were not returned."""


class KeyTooLong(MemKVError, ValueError):
    """A key is empty or longer than 512 bytes."""


class ServerError(MemKVError):
    """The node answered an op with an error status."""


class BatchError(MemKVError):
    """Some items of a batch failed; `failed` maps each failed key to the reason."""

    def __init__(self, message: str, failed: dict):
        super().__init__(message)
        self.failed = failed
