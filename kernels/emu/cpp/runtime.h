// The emulator's host side: launching a kernel body on a grid, and the table of entry points that the
// runner (main.cpp) calls by name with cudaLaunchKernel-style arguments (one pointer per parameter).
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "emu.h"

namespace emu {

void launch(const char* entry, dim3 grid, dim3 block, size_t dynamic_shared, const std::function<void()>& body);

struct Entry {
    const char* name;
    std::vector<size_t> sizes;    // sizeof each parameter
    std::vector<bool> pointers;   // whether each parameter is a pointer
    void (*call)(void* const* args);
};

void register_entries(const Entry* entries, size_t n);
const Entry* find_entry(const std::string& name);

template <class... A, size_t... I>
inline void invoke_seq(void (*f)(A...), void* const* args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}
template <class... A>
inline void invoke(void (*f)(A...), void* const* args) {
    invoke_seq(f, args, std::index_sequence_for<A...>{});
}
template <class... A>
inline Entry make_entry(const char* name, void (*)(A...), void (*call)(void* const*)) {
    return Entry{name, {sizeof(A)...}, {std::is_pointer_v<A>...}, call};
}

}  // namespace emu

#define EMU_ENTRY(fn) emu::make_entry(#fn, &fn, [](void* const* a) { emu::invoke(&fn, a); })
