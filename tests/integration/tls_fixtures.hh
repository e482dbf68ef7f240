// Certificates for the TLS tests, made once per run with the openssl CLI in env().tmpdir:
// a test CA, server certificates (the first and a "rotated" one), client certificates.
#pragma once

#include <string>

namespace pgw::it {

struct TlsFiles {
    std::string dir;
    // The test CA that every client verifies against (sslrootcert).
    std::string ca_cert, ca_key;
    // CN=localhost, subjectAltName DNS:localhost and IP:127.0.0.1, signed by the test CA.
    std::string server_cert, server_key;
    // The same names and CA, subject O=rotated,CN=localhost: what a certificate reload
    // swaps in.
    std::string rotated_cert, rotated_key;
    // A CA that signed none of the above (verify-full against it must fail).
    std::string other_ca_cert, other_ca_key;
    // CN=alice, extendedKeyUsage clientAuth, signed by the test CA.
    std::string client_cert, client_key;
    // CN=alice as well, signed by the unrelated CA: presented, it must be refused.
    std::string other_client_cert, other_client_key;
};

// Made on first use; throws std::runtime_error with openssl's output when a step fails.
// When the tests run as root every file belongs to the postgres user (keys 0600,
// certificates 0644), so PostgreSQL could use them too; root reads them regardless.
const TlsFiles& tls_files();

// Copies `from` to `to` (replacing it, keeping `to`'s inode), with `to`'s owner and mode
// set as tls_files() sets them: for tests that swap certificates in place.
void copy_tls_file(const std::string& from, const std::string& to);

}  // namespace pgw::it
