// Running a function on a private, lazily committed stack with ucontext: no thread, so
// libpg_query's per-thread memory context and the worker's signal mask stay as they are.
#include "policy/deep_stack.hh"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>

#if defined(__SANITIZE_ADDRESS__)
#define PGW_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PGW_ASAN 1
#endif
#endif

#ifdef PGW_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace pgw::policy {
namespace {

// AddressSanitizer keeps its own idea of where the current stack is; without these
// calls it reports false errors (or corrupts its shadow) when a longjmp inside
// libpg_query unwinds on a stack it does not know.
void asan_start_switch([[maybe_unused]] void** fake_stack_save,
                       [[maybe_unused]] const void* bottom, [[maybe_unused]] std::size_t size)
{
#ifdef PGW_ASAN
    __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#endif
}

void asan_finish_switch([[maybe_unused]] void* fake_stack_save,
                        [[maybe_unused]] const void** bottom_old,
                        [[maybe_unused]] std::size_t* size_old)
{
#ifdef PGW_ASAN
    __sanitizer_finish_switch_fiber(fake_stack_save, bottom_old, size_old);
#endif
}

struct Fiber {
    ucontext_t caller{};
    ucontext_t callee{};
    const std::function<void()>* fn = nullptr;
    std::exception_ptr error;
    void* fake_stack = nullptr;
    const void* caller_bottom = nullptr;
    std::size_t caller_size = 0;
};

// makecontext passes int arguments only, so the Fiber's address comes in two halves.
void trampoline(unsigned hi, unsigned lo)
{
    auto* f = reinterpret_cast<Fiber*>(std::uintptr_t((std::uint64_t(hi) << 32) | lo));
    asan_finish_switch(nullptr, &f->caller_bottom, &f->caller_size);
    // Unwinding must not leave this stack: there is no frame above the trampoline.
    try {
        (*f->fn)();
    } catch (...) {
        f->error = std::current_exception();
    }
    // nullptr: this stack is finished for good. Returning resumes uc_link (the caller).
    asan_start_switch(nullptr, f->caller_bottom, f->caller_size);
}

class Mapping {
public:
    Mapping(void* base, std::size_t size) : base_(base), size_(size) {}
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping() { ::munmap(base_, size_); }

private:
    void* base_;
    std::size_t size_;
};

} // namespace

Status run_on_deep_stack(std::size_t bytes, const std::function<void()>& fn)
{
    static_assert(sizeof(std::uintptr_t) <= 8 && sizeof(unsigned) == 4, "pointer must fit two ints");
    const std::size_t page = std::size_t(::sysconf(_SC_PAGESIZE));
    const std::size_t usable = (bytes + page - 1) / page * page;
    const std::size_t total = usable + page;  // + the guard page
    void* base = ::mmap(nullptr, total, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (base == MAP_FAILED)
        return Error{"cannot map a " + std::to_string(total >> 20) +
                     " MiB stack for the parser: " + std::strerror(errno)};
    Mapping mapping(base, total);
    // Stacks grow down: an overflow runs into this page and faults instead of
    // silently writing over whatever is mapped below.
    if (::mprotect(base, page, PROT_NONE) != 0)
        return Error{std::string("cannot protect the parser stack's guard page: ") +
                     std::strerror(errno)};

    Fiber f;
    f.fn = &fn;
    if (::getcontext(&f.callee) != 0)
        return Error{std::string("getcontext: ") + std::strerror(errno)};
    char* stack = static_cast<char*>(base) + page;
    f.callee.uc_stack.ss_sp = stack;
    f.callee.uc_stack.ss_size = usable;
    f.callee.uc_link = &f.caller;
    auto addr = std::uint64_t(reinterpret_cast<std::uintptr_t>(&f));
    ::makecontext(&f.callee, reinterpret_cast<void (*)()>(&trampoline), 2,
                  unsigned(addr >> 32), unsigned(addr & 0xffffffffu));

    asan_start_switch(&f.fake_stack, stack, usable);
    int rc = ::swapcontext(&f.caller, &f.callee);
    asan_finish_switch(f.fake_stack, nullptr, nullptr);
    if (rc != 0)
        return Error{std::string("swapcontext: ") + std::strerror(errno)};

    if (f.error)
        std::rethrow_exception(f.error);
    return ok_status();
}

} // namespace pgw::policy
