// Certificate tooling (OpenSSL libcrypto): see certs/README.md.
