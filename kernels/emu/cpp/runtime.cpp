// The emulator's scheduler: one ucontext fiber per CUDA thread, one block at a time. Fibers run until
// they block (block barrier, warp collective) or exit; when none can run, pending warp collectives are
// checked and resolved first, then the block barrier. See emu.h for what is checked.
#include "runtime.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "include/mma.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

extern "C" unsigned char __start_emu_shared[];
extern "C" unsigned char __stop_emu_shared[];
// Keeps the section (and so the two symbols above) present even in a program with no static shared memory.
__attribute__((section("emu_shared"), used)) static unsigned char emu_shared_anchor[16];

namespace emu {

enum class State { Runnable, AtBarrier, AtCollective, Exited };

struct Thread {
    ThreadView view;
    unsigned linear = 0;
    ucontext_t ctx{};
    void* stack = nullptr;
    size_t stack_size = 0;
    State state = State::Runnable;
    Site site{nullptr, 0};
    unsigned mask = 0;
    Resolver resolve = nullptr;
    void* payload = nullptr;
#if EMU_ASAN
    void* fake_stack = nullptr;
#endif
};

ThreadView* g_current = nullptr;
dim3 g_block_idx, g_block_dim, g_grid_dim;
unsigned char* g_dynamic_shared = nullptr;

namespace {

constexpr size_t kStackSize = 256 * 1024;
std::vector<Thread> g_threads;
Thread* g_running = nullptr;
ucontext_t g_scheduler;
const char* g_entry = "";
const std::function<void()>* g_body = nullptr;
#if EMU_ASAN
const void* g_main_stack_bottom = nullptr;
size_t g_main_stack_size = 0;
#endif

bool same_site(Site a, Site b) { return a.line == b.line && std::strcmp(a.file, b.file) == 0; }

std::string where(Site s) { return std::string(s.file) + ":" + std::to_string(s.line); }

[[noreturn]] void fail_at(const std::string& msg) {
    std::fprintf(stderr, "emulator: %s: block (%u,%u,%u): %s\n", g_entry, g_block_idx.x, g_block_idx.y,
                 g_block_idx.z, msg.c_str());
    std::fflush(stderr);
    _exit(3);
}

// Back to the scheduler; returns when this thread is resumed.
void yield_to_scheduler(bool exiting) {
    Thread* me = g_running;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(exiting ? nullptr : &me->fake_stack, g_main_stack_bottom, g_main_stack_size);
#endif
    swapcontext(&me->ctx, &g_scheduler);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(me->fake_stack, nullptr, nullptr);
#endif
    (void)exiting;
}

void fiber_main() {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g_main_stack_bottom, &g_main_stack_size);
#endif
    (*g_body)();
    g_running->state = State::Exited;
    yield_to_scheduler(true);
    std::abort();  // an exited fiber is never resumed
}

void run(Thread& t) {
    g_running = &t;
    g_current = &t.view;
#if EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, t.stack, t.stack_size);
#endif
    swapcontext(&g_scheduler, &t.ctx);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    g_running = nullptr;
}

// Not instrumented: the section is plain memory that AddressSanitizer does not guard.
__attribute__((no_sanitize_address)) void poison_static_shared() {
    for (unsigned char* p = __start_emu_shared; p < __stop_emu_shared; ++p) *p = 0xFF;
}

const char* state_name(State s) {
    switch (s) {
        case State::Runnable: return "running";
        case State::AtBarrier: return "at __syncthreads";
        case State::AtCollective: return "at a warp collective";
        case State::Exited: return "exited";
    }
    return "?";
}

// Resolves every complete warp collective; fails on one that can never complete. Returns whether any ran.
bool resolve_collectives(unsigned n_threads) {
    bool any = false;
    for (unsigned w0 = 0; w0 < n_threads; w0 += 32) {
        for (unsigned l = 0; l < 32 && w0 + l < n_threads; ++l) {
            Thread& t = g_threads[w0 + l];
            if (t.state != State::AtCollective) continue;
            const unsigned mask = t.mask;
            if ((mask >> l & 1u) == 0) {
                fail_at("warp collective at " + where(t.site) + ": lane " + std::to_string(l) +
                        " is not in its own mask");
            }
            void* payloads[32] = {};
            for (unsigned m = 0; m < 32; ++m) {
                if ((mask >> m & 1u) == 0) continue;
                if (w0 + m >= n_threads) {
                    fail_at("warp collective at " + where(t.site) + ": mask names lane " + std::to_string(m) +
                            ", which does not exist in this block");
                }
                Thread& o = g_threads[w0 + m];
                if (o.state == State::Exited) {
                    fail_at("warp collective at " + where(t.site) + " (mask " + std::to_string(mask) +
                            "): lane " + std::to_string(m) + " of warp " + std::to_string(w0 / 32) +
                            " has exited");
                }
                if (o.state != State::AtCollective || !same_site(o.site, t.site)) {
                    fail_at("warp collective at " + where(t.site) + ": lane " + std::to_string(m) + " of warp " +
                            std::to_string(w0 / 32) + " is " + state_name(o.state) +
                            (o.state == State::AtCollective || o.state == State::AtBarrier ? " " + where(o.site)
                                                                                          : std::string()));
                }
                if (o.mask != mask || o.resolve != t.resolve) {
                    fail_at("warp collective at " + where(t.site) + ": lanes disagree on the mask or operation");
                }
                payloads[m] = o.payload;
            }
            t.resolve(payloads, mask);
            for (unsigned m = 0; m < 32; ++m) {
                if (mask >> m & 1u) g_threads[w0 + m].state = State::Runnable;
            }
            any = true;
        }
    }
    return any;
}

}  // namespace

void fail(Site site, const char* what) { fail_at(where(site) + ": " + what); }

unsigned lane_id() { return g_running->linear & 31u; }

void syncthreads(Site site) {
    g_running->state = State::AtBarrier;
    g_running->site = site;
    yield_to_scheduler(false);
}

void warp_collective(Site site, unsigned mask, Resolver resolve, void* payload) {
    Thread* me = g_running;
    me->state = State::AtCollective;
    me->site = site;
    me->mask = mask;
    me->resolve = resolve;
    me->payload = payload;
    yield_to_scheduler(false);
}

void resolve_shfl(void* const payloads[32], unsigned mask) {
    for (int l = 0; l < 32; ++l) {
        auto* p = static_cast<ShflPayload*>(payloads[l]);
        if (p == nullptr) continue;
        const int src = p->src;
        // A source lane outside the mask: undefined on the GPU; an error here.
        if (src < 0 || src > 31 || (mask >> src & 1u) == 0) {
            fail_at("shuffle reads lane " + std::to_string(src) + ", which is not in the mask");
        }
        p->result = static_cast<ShflPayload*>(payloads[src])->value;
    }
}

struct VotePayload {
    uint64_t value;
    unsigned result;
};

static void resolve_ballot(void* const payloads[32], unsigned) {
    unsigned bits = 0;
    for (int l = 0; l < 32; ++l) {
        if (payloads[l] && static_cast<VotePayload*>(payloads[l])->value) bits |= 1u << l;
    }
    for (int l = 0; l < 32; ++l) {
        if (payloads[l]) static_cast<VotePayload*>(payloads[l])->result = bits;
    }
}

static void resolve_match_any(void* const payloads[32], unsigned) {
    for (int l = 0; l < 32; ++l) {
        if (!payloads[l]) continue;
        auto* me = static_cast<VotePayload*>(payloads[l]);
        unsigned bits = 0;
        for (int o = 0; o < 32; ++o) {
            if (payloads[o] && static_cast<VotePayload*>(payloads[o])->value == me->value) bits |= 1u << o;
        }
        me->result = bits;
    }
}

static void resolve_nothing(void* const[32], unsigned) {}

unsigned ballot(Site site, unsigned mask, bool p) {
    VotePayload v{p ? 1u : 0u, 0};
    warp_collective(site, mask, resolve_ballot, &v);
    return v.result;
}

unsigned match_any(Site site, unsigned mask, uint64_t value) {
    VotePayload v{value, 0};
    warp_collective(site, mask, resolve_match_any, &v);
    return v.result;
}

void syncwarp(Site site, unsigned mask) { warp_collective(site, mask, resolve_nothing, nullptr); }

// ---- f16 ----
uint16_t f32_to_f16_rn(float f) {
    const uint32_t u = f32_to_bits(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return 0x7fffu;                    // NaN: canonical
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520: infinity
    if (abs < 0x38800000u) {
        // Subnormal or zero in f16: value / 2^-24, rounded to nearest even.
        if (abs < 0x33000000u) return (uint16_t)sign;  // below half the smallest subnormal
        const uint32_t exp = abs >> 23;
        const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - exp;  // so that mant >> shift is the value in units of 2^-24
        uint32_t q = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1u);
        const uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) ++q;
        return (uint16_t)(sign | q);
    }
    // Normal: rebias 127 -> 15 and round the 13 dropped bits to nearest even (a carry may reach infinity,
    // which the threshold above already excludes).
    uint32_t r = abs - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        const float v = std::ldexp((float)mant, -24);
        return sign ? -v : v;
    }
    return bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

// ---- mma.sync m16n8k16 bf16: fragment layouts from the PTX ISA (groupID = lane >> 2,
// threadID_in_group = lane % 4; each .b32 register holds two .bf16, the lower-numbered element in bits
// 0-15):
//   A (16x16, row): a_i, i = 0..7 (register i/2): row = groupID + 8 for i in {2,3,6,7}, else groupID;
//                   col = threadID_in_group*2 + (i & 1) + 8 for i >= 4
//   B (16x8, col):  b_i, i = 0..3 (register i/2): row (k) = threadID_in_group*2 + (i & 1) + 8 for i >= 2;
//                   col (n) = groupID
//   C, D (16x8):    c_i, i = 0..3: row = groupID + 8 for i >= 2; col = threadID_in_group*2 + (i & 1)
struct MmaPayload {
    float d[4];
    unsigned a[4];
    unsigned b[2];
};

static float half_of(unsigned reg, int i) { return bf16_to_f32((uint16_t)(i & 1 ? reg >> 16 : reg & 0xffffu)); }

// Products are exact in f32 (bf16 x bf16); sums in f32 in k order, starting from C.
static void resolve_mma(void* const payloads[32], unsigned) {
    float A[16][16], B[16][8], C[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const auto* p = static_cast<MmaPayload*>(payloads[lane]);
        const int g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 8; ++i) {
            const int row = g + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0);
            const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
            A[row][col] = half_of(p->a[i / 2], i);
        }
        for (int i = 0; i < 4; ++i) {
            B[t * 2 + (i & 1) + (i >= 2 ? 8 : 0)][g] = half_of(p->b[i / 2], i);
        }
        for (int i = 0; i < 4; ++i) C[g + (i >= 2 ? 8 : 0)][t * 2 + (i & 1)] = p->d[i];
    }
    for (int lane = 0; lane < 32; ++lane) {
        auto* p = static_cast<MmaPayload*>(payloads[lane]);
        const int g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 4; ++i) {
            const int row = g + (i >= 2 ? 8 : 0), col = t * 2 + (i & 1);
            float acc = C[row][col];
            for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
            p->d[i] = acc;
        }
    }
}

void mma_m16n8k16_bf16_f32(Site site, float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
    MmaPayload p{{d[0], d[1], d[2], d[3]}, {a[0], a[1], a[2], a[3]}, {b0, b1}};
    warp_collective(site, 0xffffffffu, resolve_mma, &p);
    for (int i = 0; i < 4; ++i) d[i] = p.d[i];
}

// ---- launch ----
void launch(const char* entry, dim3 grid, dim3 block, size_t dynamic_shared, const std::function<void()>& body) {
    g_entry = entry;
    const unsigned long long n = (unsigned long long)block.x * block.y * block.z;
    if (n == 0 || n > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
        grid.z > 65535) {
        fail_at("invalid launch configuration");
    }
    if (dynamic_shared > 227 * 1024) fail_at("dynamic shared memory above 227 KB");
    g_grid_dim = grid;
    g_block_dim = block;
    g_body = &body;
    if (g_threads.size() < n) g_threads.resize(n);
    for (unsigned i = 0; i < n; ++i) {
        Thread& t = g_threads[i];
        if (t.stack == nullptr) {
            t.stack = mmap(nullptr, kStackSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                           -1, 0);
            if (t.stack == MAP_FAILED) fail_at("cannot map a fiber stack");
            t.stack_size = kStackSize;
        }
    }
    for (unsigned bz = 0; bz < grid.z; ++bz) {
        for (unsigned by = 0; by < grid.y; ++by) {
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                g_block_idx = {bx, by, bz};
                poison_static_shared();
                unsigned char* dyn_mem = nullptr;
                if (dynamic_shared != 0) {
                    void* q = nullptr;
                    if (posix_memalign(&q, 16, dynamic_shared) != 0) fail_at("cannot allocate dynamic shared memory");
                    dyn_mem = static_cast<unsigned char*>(q);
                    std::memset(dyn_mem, 0xFF, dynamic_shared);
                }
                g_dynamic_shared = dyn_mem;
                for (unsigned i = 0; i < n; ++i) {
                    Thread& t = g_threads[i];
                    t.linear = i;
                    t.view.thread_idx = {i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
                    t.state = State::Runnable;
                    t.site = {nullptr, 0};
#if EMU_ASAN
                    __asan_unpoison_memory_region(t.stack, t.stack_size);
                    t.fake_stack = nullptr;
#endif
                    getcontext(&t.ctx);
                    t.ctx.uc_stack.ss_sp = t.stack;
                    t.ctx.uc_stack.ss_size = t.stack_size;
                    t.ctx.uc_link = nullptr;
                    makecontext(&t.ctx, fiber_main, 0);
                }
                // Alternate the order in which threads run between barrier phases, so that a missing
                // barrier sees another thread's write both before and after it.
                bool forward = true;
                for (;;) {
                    bool ran = true;
                    while (ran) {
                        ran = false;
                        for (unsigned j = 0; j < n; ++j) {
                            Thread& t = g_threads[forward ? j : n - 1 - j];
                            if (t.state == State::Runnable) {
                                run(t);
                                ran = true;
                            }
                        }
                        if (!ran && resolve_collectives((unsigned)n)) ran = true;
                    }
                    // Nothing runnable, no collective pending: all live threads are at __syncthreads.
                    Site site{nullptr, 0};
                    bool live = false;
                    for (unsigned i = 0; i < n; ++i) {
                        Thread& t = g_threads[i];
                        if (t.state == State::Exited) continue;
                        if (t.state != State::AtBarrier) fail_at("internal: a thread is neither at a barrier nor exited");
                        if (!live) {
                            site = t.site;
                            live = true;
                        } else if (!same_site(site, t.site)) {
                            fail_at("__syncthreads reached from different call sites: thread " + std::to_string(i) +
                                    " at " + where(t.site) + ", others at " + where(site));
                        }
                    }
                    if (!live) break;
                    for (unsigned i = 0; i < n; ++i) {
                        if (g_threads[i].state == State::AtBarrier) g_threads[i].state = State::Runnable;
                    }
                    forward = !forward;
                }
                g_dynamic_shared = nullptr;
                std::free(dyn_mem);
            }
        }
    }
    g_current = nullptr;
}

}  // namespace emu

namespace nvcuda {
namespace wmma {

void resolve_uniform_mem(void* const payloads[32], unsigned) {
    const auto* first = static_cast<MemPayload*>(payloads[0]);
    for (int l = 1; l < 32; ++l) {
        const auto* p = static_cast<MemPayload*>(payloads[l]);
        if (p->ptr != first->ptr || p->ldm != first->ldm) {
            emu::fail_at("WMMA load/store: pointer or stride differs between lanes of the warp");
        }
    }
    if (reinterpret_cast<uintptr_t>(first->ptr) % 32 != 0) {
        emu::fail_at("WMMA load/store: pointer not 256-bit aligned");
    }
    if ((first->ldm * first->elem) % 16 != 0) {
        emu::fail_at("WMMA load/store: stride not a multiple of 16 bytes");
    }
}

// Products exact in f32; sums in f32 in k order starting from C.
void resolve_wmma(void* const payloads[32], unsigned) {
    float A[16][16], B[16][16], C[16][16];
    for (unsigned lane = 0; lane < 32; ++lane) {
        const auto* p = static_cast<MmaPayload*>(payloads[lane]);
        for (int i = 0; i < 8; ++i) {
            int r, c;
            a_pos(lane, i, r, c);
            A[r][c] = __bfloat162float(p->a[i]);
            b_pos(lane, i, r, c);
            B[r][c] = __bfloat162float(p->b[i]);
            acc_pos(lane, i, r, c);
            C[r][c] = p->c[i];
        }
    }
    for (unsigned lane = 0; lane < 32; ++lane) {
        auto* p = static_cast<MmaPayload*>(payloads[lane]);
        for (int i = 0; i < 8; ++i) {
            int r, c;
            acc_pos(lane, i, r, c);
            float acc = C[r][c];
            for (int k = 0; k < 16; ++k) acc += A[r][k] * B[k][c];
            p->d[i] = acc;
        }
    }
}

}  // namespace wmma
}  // namespace nvcuda
