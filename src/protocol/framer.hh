// Incremental framing of a typed-message stream (1 type byte + 4 length bytes + body)
// without copying: reports boundaries, hands whole bodies only for the types asked for.
#pragma once

#include "protocol/bytes.hh"

#include <algorithm>
#include <cstdint>

namespace pgw::protocol {

enum class ScanStatus {
    NeedMore,   // scanned what could be; the rest is an incomplete header or inspected message
    Stopped,    // the callback asked to stop after a message
    Violation,  // a length below 4: the stream cannot be framed any further
    TooLarge,   // strict mode: a message asked for whole is larger than max_inspect
};

struct ScanResult {
    size_t scanned = 0;  // bytes from the start of the span that may now be forwarded
    ScanStatus status = ScanStatus::NeedMore;
};

class Framer {
public:
    // inspect(type) says whether a type's whole body must be seen; max_inspect caps the
    // size of such a message (larger ones are passed on uninspected).
    explicit Framer(size_t max_inspect) : max_inspect_(max_inspect) {}
    // Strict: a message whose body inspect() asks for but that exceeds max_inspect stops
    // the scan (TooLarge) instead of passing uninspected (for messages a policy must see).
    void set_strict(bool strict) { strict_ = strict; }

    // Scans `data`, which starts where the previous call's `scanned` ended.
    // Inspect: bool(char type), called exactly once per message, when its header is
    // first seen; true asks for the whole body. OnMessage: bool(char type, ByteSpan
    // body) for those messages -> false to stop right after this one.
    template <typename Inspect, typename OnMessage>
    ScanResult scan(ByteSpan data, Inspect&& inspect, OnMessage&& on_message)
    {
        size_t pos = 0;
        while (pos < data.size()) {
            if (skip_ > 0) {
                size_t take = std::min<std::uint64_t>(skip_, data.size() - pos);
                pos += take;
                skip_ -= take;
                continue;
            }
            if (data.size() - pos < 5)
                return {pos, ScanStatus::NeedMore};
            char type = char(data[pos]);
            std::uint32_t len = load_be32(data.data() + pos + 1);
            if (len < 4)
                return {pos, ScanStatus::Violation};
            if (!waiting_for_body_) {
                ++messages_;
                header_size_ = std::uint64_t(len) + 1;
                header_offset_ = pos;
                const bool wanted = inspect(type);
                if (wanted && strict_ && size_t(len) + 1 > max_inspect_)
                    return {pos, ScanStatus::TooLarge};
                if (!(wanted && size_t(len) + 1 <= max_inspect_)) {
                    pos += 5;
                    skip_ = len - 4;
                    continue;
                }
            }
            if (data.size() - pos < size_t(len) + 1) {
                waiting_for_body_ = true;
                return {pos, ScanStatus::NeedMore};
            }
            waiting_for_body_ = false;
            ByteSpan body = data.subspan(pos + 5, len - 4);
            pos += size_t(len) + 1;
            if (!on_message(type, body))
                return {pos, ScanStatus::Stopped};
        }
        return {pos, ScanStatus::NeedMore};
    }

    // True when the bytes scanned so far end between two messages (what may be
    // forwarded holds no partial message).
    bool at_boundary() const { return skip_ == 0; }
    std::uint64_t messages() const { return messages_; }
    // Inside Inspect: the size of the message whose header it is, type byte included.
    std::uint64_t header_size() const { return header_size_; }
    // Inside Inspect: where that message starts in the span being scanned.
    size_t header_offset() const { return header_offset_; }

private:
    size_t max_inspect_;
    bool strict_ = false;
    std::uint64_t skip_ = 0;
    std::uint64_t messages_ = 0;
    std::uint64_t header_size_ = 0;
    size_t header_offset_ = 0;
    bool waiting_for_body_ = false;  // the header at the scan position was inspected already
};

} // namespace pgw::protocol
