// The emulator runner: `emu-runner REQUEST RESPONSE`. REQUEST (little-endian) holds device buffers and a
// sequence of launches over them; the runner executes the launches in order and writes every buffer back
// to RESPONSE. Format (see kernels/emu/src/lib.rs, which writes it):
//   "EMU1", u32 n_buffers, per buffer: u64 length, bytes
//   u32 n_launches, per launch: u32 name length, name, u32 grid[3], u32 block[3], u64 dynamic shared bytes,
//     u32 n_args, per argument: u8 kind (0 null pointer, 1 buffer + u32 index + u64 byte offset,
//     2 scalar + u32 size + bytes)
// RESPONSE: u32 n_buffers, per buffer: u64 length, bytes.
// Exit status: 0 done, 2 bad request, 3 a check of the emulator failed (message on stderr), 4 AddressSanitizer;
// killed by SIGALRM after 120 s.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "runtime.h"

#if defined(__SANITIZE_ADDRESS__)
// Fibers switch stacks: no fake stacks (stack-use-after-return), no leak check at exit.
extern "C" const char* __asan_default_options() {
    return "detect_stack_use_after_return=0:detect_leaks=0:abort_on_error=0:exitcode=4";
}
#endif

namespace emu {
namespace {
std::vector<Entry>& table() {
    static std::vector<Entry> t;
    return t;
}
}  // namespace
void register_entries(const Entry* entries, size_t n) { table().insert(table().end(), entries, entries + n); }
const Entry* find_entry(const std::string& name) {
    for (const Entry& e : table()) {
        if (name == e.name) return &e;
    }
    return nullptr;
}
}  // namespace emu

namespace {

[[noreturn]] void bad(const std::string& msg) {
    std::fprintf(stderr, "emu-runner: bad request: %s\n", msg.c_str());
    std::exit(2);
}

struct Buffer {
    unsigned char* p = nullptr;
    size_t n = 0;
    Buffer() = default;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() { std::free(p); }
    void allocate(size_t bytes) {
        void* q = nullptr;
        if (posix_memalign(&q, 256, bytes == 0 ? 1 : bytes) != 0) bad("out of memory");
        p = static_cast<unsigned char*>(q);
        n = bytes;
    }
    unsigned char* data() const { return p; }
    size_t size() const { return n; }
};

struct Reader {
    const std::vector<unsigned char>& b;
    size_t at = 0;
    void take(void* out, size_t n) {
        if (n > b.size() - at) bad("truncated");
        std::memcpy(out, b.data() + at, n);
        at += n;
    }
    template <class T>
    T get() {
        T v;
        take(&v, sizeof v);
        return v;
    }
};

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) bad("usage: emu-runner REQUEST RESPONSE");
    // A kernel that never finishes (a thread spinning on a flag no other fiber can set while it runs)
    // would hang the tests; the default SIGALRM action ends the runner instead.
    alarm(120);
    std::ifstream in(argv[1], std::ios::binary);
    if (!in) bad(std::string("cannot read ") + argv[1]);
    const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    Reader r{bytes};
    char magic[4];
    r.take(magic, 4);
    if (std::memcmp(magic, "EMU1", 4) != 0) bad("not an EMU1 request");
    // Each buffer its own exact-size allocation, 256-byte aligned as cudaMalloc's, so that
    // AddressSanitizer sees a kernel's out-of-bounds access right past the end.
    std::vector<Buffer> buffers(r.get<uint32_t>());
    for (auto& buf : buffers) {
        buf.allocate(r.get<uint64_t>());
        r.take(buf.data(), buf.size());
    }
    const uint32_t n_launches = r.get<uint32_t>();
    for (uint32_t li = 0; li < n_launches; ++li) {
        std::string name(r.get<uint32_t>(), '\0');
        r.take(name.data(), name.size());
        const emu::Entry* entry = emu::find_entry(name);
        if (entry == nullptr) bad("no kernel entry point " + name);
        dim3 grid, block;
        grid.x = r.get<uint32_t>();
        grid.y = r.get<uint32_t>();
        grid.z = r.get<uint32_t>();
        block.x = r.get<uint32_t>();
        block.y = r.get<uint32_t>();
        block.z = r.get<uint32_t>();
        const uint64_t smem = r.get<uint64_t>();
        const uint32_t n_args = r.get<uint32_t>();
        if (n_args != entry->sizes.size()) {
            bad(name + ": " + std::to_string(n_args) + " arguments, the kernel takes " +
                std::to_string(entry->sizes.size()));
        }
        // Storage for each argument's value; args[i] points at it (cudaLaunchKernel's convention).
        std::vector<uint64_t> values(n_args, 0);
        std::vector<void*> args(n_args);
        for (uint32_t a = 0; a < n_args; ++a) {
            const uint8_t kind = r.get<uint8_t>();
            const std::string which = name + " argument " + std::to_string(a);
            if (kind == 0 || kind == 1) {
                if (!entry->pointers[a]) bad(which + ": a pointer given for a scalar parameter");
                void* p = nullptr;
                if (kind == 1) {
                    const uint32_t index = r.get<uint32_t>();
                    const uint64_t offset = r.get<uint64_t>();
                    if (index >= buffers.size() || offset > buffers[index].size()) bad(which + ": no such buffer");
                    p = buffers[index].data() + offset;
                }
                std::memcpy(&values[a], &p, sizeof p);
            } else if (kind == 2) {
                const uint32_t size = r.get<uint32_t>();
                if (entry->pointers[a] || size != entry->sizes[a] || size > 8) {
                    bad(which + ": scalar of " + std::to_string(size) + " bytes, the parameter has " +
                        std::to_string(entry->sizes[a]));
                }
                r.take(&values[a], size);
            } else {
                bad(which + ": unknown kind");
            }
            args[a] = &values[a];
        }
        const auto call = entry->call;
        void* const* argv_ = args.data();
        emu::launch(entry->name, grid, block, smem, [call, argv_] { call(argv_); });
    }
    std::ofstream out(argv[2], std::ios::binary);
    const uint32_t n = (uint32_t)buffers.size();
    out.write(reinterpret_cast<const char*>(&n), 4);
    for (const auto& buf : buffers) {
        const uint64_t len = buf.size();
        out.write(reinterpret_cast<const char*>(&len), 8);
        out.write(reinterpret_cast<const char*>(buf.data()), (std::streamsize)buf.size());
    }
    if (!out) bad(std::string("cannot write ") + argv[2]);
    return 0;
}
