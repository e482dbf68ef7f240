// Running a function on a private stack of a chosen size: libpg_query and protobuf-c
// recurse once per level of a parse tree, and a long statement can nest very deeply.
#pragma once

#include "common/result.hh"

#include <cstddef>
#include <functional>

namespace pgw::policy {

// Runs fn on a fresh stack of at least `bytes` and returns when fn does. The stack is
// mapped without reserving memory, so only the pages fn touches cost anything, and has a
// guard page below it. An exception thrown by fn is rethrown here. Error only when the
// stack cannot be set up (address space or memory limits). Single-threaded use: one
// call at a time per thread, fn must not switch stacks itself.
Status run_on_deep_stack(std::size_t bytes, const std::function<void()>& fn);

} // namespace pgw::policy
