// Signals held back outside a wait: blocked while a HeldSignals lives (or until
// restore()), and let in only inside ppoll() with wait_mask(). A signal that arrives
// between a look at its flag and the wait is then not lost, so a wait needs no tick.
#pragma once

#include <signal.h>

#include <initializer_list>

namespace pgw {

class HeldSignals {
public:
    explicit HeldSignals(std::initializer_list<int> signals)
    {
        sigset_t set;
        sigemptyset(&set);
        for (int sig : signals)
            sigaddset(&set, sig);
        sigprocmask(SIG_BLOCK, &set, &before_);
    }
    ~HeldSignals() { restore(); }
    HeldSignals(const HeldSignals&) = delete;
    HeldSignals& operator=(const HeldSignals&) = delete;

    // The mask from before: what ppoll() waits with.
    const sigset_t* wait_mask() const { return &before_; }
    // Back to the mask from before (once; the destructor then does nothing).
    void restore()
    {
        if (held_)
            sigprocmask(SIG_SETMASK, &before_, nullptr);
        held_ = false;
    }

private:
    sigset_t before_;
    bool held_ = true;
};

} // namespace pgw
