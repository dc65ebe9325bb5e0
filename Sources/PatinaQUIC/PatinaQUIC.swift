// The QUIC transport (ngtcp2 + GnuTLS): see ../shared/DESIGN.md.
