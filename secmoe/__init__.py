"""secmoe: private two-party inference of Mixture-of-Experts transformers."""

__version__ = "0.1.0"
#: Wire protocol version; both parties must agree (checked in the TCP handshake).
PROTOCOL_VERSION = 2  # 2: abort frames on the reserved path "/"
