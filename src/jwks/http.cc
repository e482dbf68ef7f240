// HTTPS GET with libcurl for the key fetcher (src/jwks/fetch.cc). Only the fetcher
// process and --check-config call it: libcurl's resolver runs a thread, which the
// supervisor and the workers must never have.
#include "jwks/http.hh"

#include "jwks/documents.hh"

#include <curl/curl.h>

#include <cctype>
#include <cstdlib>
#include <memory>

namespace pgw::jwks {
namespace {

struct CurlDeleter {
    void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistDeleter {
    void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

struct Transfer {
    HttpResponse* response;
    size_t max_bytes;
    bool too_large = false;
};

size_t on_body(char* data, size_t size, size_t n, void* user)
{
    auto* t = static_cast<Transfer*>(user);
    const size_t len = size * n;
    if (t->response->body.size() + len > t->max_bytes) {
        t->too_large = true;
        return 0;  // curl ends the transfer with CURLE_WRITE_ERROR
    }
    t->response->body.append(data, len);
    return len;
}

size_t on_header(char* data, size_t size, size_t n, void* user)
{
    auto* t = static_cast<Transfer*>(user);
    const size_t len = size * n;
    std::string_view line(data, len);
    if (iequals_prefix(line, "http/")) {
        // A new response (after a redirect): its headers are the ones that count.
        t->response->max_age.reset();
        t->response->no_cache = false;
    } else if (iequals_prefix(line, "cache-control:")) {
        parse_cache_control(line.substr(14), t->response->max_age, t->response->no_cache);
    }
    return len;
}

std::string ms_text(std::chrono::milliseconds ms)
{
    if (ms.count() % 1000 == 0)
        return std::to_string(ms.count() / 1000) + " s";
    return std::to_string(ms.count()) + " ms";
}

} // namespace

Result<HttpResponse> https_get(const std::string& url, const HttpOptions& options)
{
    std::unique_ptr<CURL, CurlDeleter> curl(curl_easy_init());
    if (!curl)
        return Error{"could not set up libcurl"};
    HttpResponse response;
    Transfer transfer{&response, options.max_bytes};
    char errbuf[CURL_ERROR_SIZE] = {};
    std::unique_ptr<curl_slist, SlistDeleter> headers(curl_slist_append(nullptr, "Accept: application/json"));
    CURL* c = curl.get();
    bool set_ok = true;
    auto set = [&](CURLcode rc) { set_ok = set_ok && rc == CURLE_OK; };
    set(curl_easy_setopt(c, CURLOPT_URL, url.c_str()));
    set(curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf));
    set(curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L));
    // https only, for the first request and for every redirect.
    set(curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https"));
    set(curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "https"));
    set(curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L));
    set(curl_easy_setopt(c, CURLOPT_MAXREDIRS, 3L));
    set(curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L));
    set(curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L));
    set(curl_easy_setopt(c, CURLOPT_SSLVERSION, long(CURL_SSLVERSION_TLSv1_2)));
    if (!options.ca_file.empty())
        set(curl_easy_setopt(c, CURLOPT_CAINFO, options.ca_file.c_str()));
    // An empty proxy turns proxies off, http_proxy/https_proxy/all_proxy included: what
    // reaches the identity provider is what the configuration says.
    set(curl_easy_setopt(c, CURLOPT_PROXY, options.proxy.c_str()));
    set(curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, long(options.connect_timeout.count())));
    set(curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, long(options.total_timeout.count())));
    set(curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, curl_off_t(options.max_bytes)));
    set(curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get()));
    set(curl_easy_setopt(c, CURLOPT_USERAGENT, "pgwicket/" PGWICKET_VERSION));
    set(curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body));
    set(curl_easy_setopt(c, CURLOPT_WRITEDATA, &transfer));
    set(curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header));
    set(curl_easy_setopt(c, CURLOPT_HEADERDATA, &transfer));
    if (!set_ok)
        return Error{url + ": this libcurl lacks an option pgwicket needs (https-only protocols need 7.85)"};

    const CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    char* effective = nullptr;
    curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &effective);
    response.final_url = effective ? effective : url;
    if (rc != CURLE_OK) {
        if (transfer.too_large || rc == CURLE_FILESIZE_EXCEEDED)
            return Error{url + ": the answer is larger than " + std::to_string(options.max_bytes) + " bytes"};
        if (rc == CURLE_OPERATION_TIMEDOUT)
            return Error{url + ": no complete answer within " +
                         ms_text(errbuf[0] && std::string_view(errbuf).find("onnect") != std::string_view::npos
                                     ? options.connect_timeout
                                     : options.total_timeout) +
                         " (" + errbuf + ")"};
        if (rc == CURLE_UNSUPPORTED_PROTOCOL && response.final_url != url)
            return Error{url + ": redirected to " + response.final_url + ", which is not https"};
        if (rc == CURLE_UNSUPPORTED_PROTOCOL || rc == CURLE_TOO_MANY_REDIRECTS) {
            char* next = nullptr;
            curl_easy_getinfo(c, CURLINFO_REDIRECT_URL, &next);
            if (next && rc == CURLE_UNSUPPORTED_PROTOCOL)
                return Error{url + ": redirected to " + next + ", which is not https"};
        }
        return Error{url + ": " + (errbuf[0] ? std::string(errbuf) : curl_easy_strerror(rc))};
    }
    if (status != 200)
        return Error{url + ": HTTP status " + std::to_string(status) +
                     (response.final_url != url ? " (from " + response.final_url + ")" : "")};
    return response;
}

} // namespace pgw::jwks
