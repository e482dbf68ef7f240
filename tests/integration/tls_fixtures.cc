// The certificate authority of the TLS tests behind tls_fixtures.hh: openssl req / x509
// runs with an explicit extension file, checked with openssl verify before any test uses it.
#include "tls_fixtures.hh"

#include "harness.hh"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace pgw::it {

namespace {

// Extensions spelled out, so nothing depends on the distribution's openssl.cnf.
const char* kExtensions = R"(
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[v3_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
)";

void openssl(const std::vector<std::string>& args, const std::string& what)
{
    std::vector<std::string> argv = {"openssl"};
    argv.insert(argv.end(), args.begin(), args.end());
    RunResult r = run(argv, {.input = "", .env = {}, .timeout_s = 60, .pty = false});
    if (!r.ok())
        throw std::runtime_error("tls fixtures: openssl " + what + " failed (" + r.status() + "):\n" +
                                 tail(r.out, 20));
}

void set_owner(const std::string& path, bool secret)
{
    if (::chmod(path.c_str(), secret ? 0600 : 0644) != 0)
        throw std::runtime_error("chmod " + path + ": " + strerror(errno));
    if (geteuid() != 0)
        return;
    passwd* pw = getpwnam("postgres");
    if (!pw)
        throw std::runtime_error("running as root but there is no postgres user");
    if (::chown(path.c_str(), pw->pw_uid, pw->pw_gid) != 0)
        throw std::runtime_error("chown " + path + ": " + strerror(errno));
}

class Maker {
public:
    explicit Maker(const std::string& dir) : dir_(dir), cnf_(dir + "/extensions.cnf")
    {
        write_file(cnf_, kExtensions);
    }

    // A self-signed CA.
    void ca(const std::string& name, const std::string& subject)
    {
        openssl({"req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-days", "3", "-sha256", "-subj",
                 subject, "-config", cnf_, "-extensions", "v3_ca", "-keyout", key(name), "-out", crt(name)},
                "req (CA " + name + ")");
        owned(name);
    }

    // A leaf certificate for `subject` signed by `ca_name`, with the extensions of `section`.
    void leaf(const std::string& name, const std::string& subject, const std::string& ca_name,
              const std::string& section)
    {
        const std::string csr = dir_ + "/" + name + ".csr";
        openssl({"req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", subject, "-config", cnf_,
                 "-keyout", key(name), "-out", csr},
                "req (" + name + ")");
        openssl({"x509", "-req", "-in", csr, "-CA", crt(ca_name), "-CAkey", key(ca_name), "-set_serial",
                 std::to_string(++serial_), "-days", "3", "-sha256", "-extfile", cnf_, "-extensions", section,
                 "-out", crt(name)},
                "x509 (" + name + ")");
        ::unlink(csr.c_str());
        owned(name);
        openssl({"verify", "-CAfile", crt(ca_name), crt(name)}, "verify (" + name + ")");
    }

    std::string crt(const std::string& name) const { return dir_ + "/" + name + ".crt"; }
    std::string key(const std::string& name) const { return dir_ + "/" + name + ".key"; }

private:
    void owned(const std::string& name)
    {
        set_owner(crt(name), false);
        set_owner(key(name), true);
    }

    std::string dir_, cnf_;
    int serial_ = 1000;
};

TlsFiles make()
{
    TlsFiles f;
    f.dir = env().tmpdir + "/tls";
    if (::mkdir(f.dir.c_str(), 0755) != 0 && errno != EEXIST)
        throw std::runtime_error("mkdir " + f.dir + ": " + strerror(errno));
    set_owner(f.dir, false);
    ::chmod(f.dir.c_str(), 0755);
    Maker m(f.dir);
    m.ca("ca", "/O=pgwicket tests/CN=pgwicket test CA");
    m.ca("other-ca", "/O=somebody else/CN=unrelated test CA");
    m.leaf("server", "/CN=localhost", "ca", "v3_server");
    m.leaf("rotated", "/O=rotated/CN=localhost", "ca", "v3_server");
    m.leaf("client", "/CN=alice", "ca", "v3_client");
    m.leaf("other-client", "/CN=alice", "other-ca", "v3_client");
    f.ca_cert = m.crt("ca");
    f.ca_key = m.key("ca");
    f.other_ca_cert = m.crt("other-ca");
    f.other_ca_key = m.key("other-ca");
    f.server_cert = m.crt("server");
    f.server_key = m.key("server");
    f.rotated_cert = m.crt("rotated");
    f.rotated_key = m.key("rotated");
    f.client_cert = m.crt("client");
    f.client_key = m.key("client");
    f.other_client_cert = m.crt("other-client");
    f.other_client_key = m.key("other-client");
    return f;
}

}  // namespace

const TlsFiles& tls_files()
{
    // Per test binary, and so per env().tmpdir: the harness makes one folder per run.
    static std::unique_ptr<TlsFiles> files;
    if (!files)
        files = std::make_unique<TlsFiles>(make());
    return *files;
}

void copy_tls_file(const std::string& from, const std::string& to)
{
    const bool secret = to.ends_with(".key");
    write_file(to, read_file(from));
    set_owner(to, secret);
}

}  // namespace pgw::it
