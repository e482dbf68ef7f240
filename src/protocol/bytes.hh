// Bounds-checked big-endian readers over untrusted bytes, and an appending writer.
// Every read checks what remains; nothing is ever cast onto a struct.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pgw::protocol {

using Bytes = std::vector<std::byte>;
using ByteSpan = std::span<const std::byte>;

inline ByteSpan as_bytes(std::string_view s)
{
    return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// The NUL-terminated string that starts at `at` in body, or nullopt when there is none.
inline std::optional<std::string_view> cstring_at(ByteSpan body, size_t at)
{
    std::string_view all(reinterpret_cast<const char*>(body.data()), body.size());
    if (at > all.size())
        return std::nullopt;
    size_t nul = all.find('\0', at);
    if (nul == std::string_view::npos)
        return std::nullopt;
    return all.substr(at, nul - at);
}

inline std::uint32_t load_be32(const std::byte* p)
{
    return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) |
           (std::uint32_t(p[2]) << 8) | std::uint32_t(p[3]);
}

class Reader {
public:
    explicit Reader(ByteSpan data) : data_(data) {}

    size_t remaining() const { return data_.size() - pos_; }
    bool empty() const { return remaining() == 0; }

    std::optional<std::uint8_t> u8()
    {
        if (remaining() < 1)
            return std::nullopt;
        return std::uint8_t(data_[pos_++]);
    }
    std::optional<std::uint16_t> u16()
    {
        if (remaining() < 2)
            return std::nullopt;
        std::uint16_t v = (std::uint16_t(data_[pos_]) << 8) | std::uint16_t(data_[pos_ + 1]);
        pos_ += 2;
        return v;
    }
    std::optional<std::uint32_t> u32()
    {
        if (remaining() < 4)
            return std::nullopt;
        std::uint32_t v = load_be32(data_.data() + pos_);
        pos_ += 4;
        return v;
    }
    std::optional<std::int32_t> i32()
    {
        auto v = u32();
        if (!v)
            return std::nullopt;
        return static_cast<std::int32_t>(*v);
    }
    // The next n bytes, or nothing when fewer are left.
    std::optional<ByteSpan> bytes(size_t n)
    {
        if (remaining() < n)
            return std::nullopt;
        ByteSpan out = data_.subspan(pos_, n);
        pos_ += n;
        return out;
    }
    // A NUL-terminated string; fails when no NUL is left.
    std::optional<std::string_view> cstring()
    {
        if (remaining() == 0)
            return std::nullopt;  // also keeps memchr away from an empty span's null pointer
        const std::byte* start = data_.data() + pos_;
        const void* nul = std::memchr(start, 0, remaining());
        if (!nul)
            return std::nullopt;
        size_t len = static_cast<const std::byte*>(nul) - start;
        pos_ += len + 1;
        return std::string_view(reinterpret_cast<const char*>(start), len);
    }

private:
    ByteSpan data_;
    size_t pos_ = 0;
};

class Writer {
public:
    void u8(std::uint8_t v) { out_.push_back(std::byte(v)); }
    void u16(std::uint16_t v)
    {
        u8(std::uint8_t(v >> 8));
        u8(std::uint8_t(v));
    }
    void u32(std::uint32_t v)
    {
        for (int shift = 24; shift >= 0; shift -= 8)
            u8(std::uint8_t(v >> shift));
    }
    void i32(std::int32_t v) { u32(static_cast<std::uint32_t>(v)); }
    void cstring(std::string_view s)
    {
        raw(as_bytes(s));
        u8(0);
    }
    void raw(ByteSpan b) { out_.insert(out_.end(), b.begin(), b.end()); }

    // Starts a typed message; finish() fills in its length.
    void begin(char type)
    {
        u8(std::uint8_t(type));
        start_ = out_.size();
        u32(0);
    }
    void finish()
    {
        std::uint32_t len = std::uint32_t(out_.size() - start_);
        for (int i = 0; i < 4; ++i)
            out_[start_ + i] = std::byte(len >> (24 - 8 * i));
    }

    Bytes& bytes() { return out_; }
    Bytes take() { return std::move(out_); }

private:
    Bytes out_;
    size_t start_ = 0;
};

} // namespace pgw::protocol
