// statehost's WASM guest: QuickJS-NG as a WASI reactor with a small ABI of our own.
//
// Built by runtime/wasm_build.py (zig cc, wasm32-wasi, reactor). The host (runtime/engines/
// quickjs_wasm.py) calls these exports; the guest imports one host function, host.interrupt, which
// QuickJS's interrupt handler polls (a monotonic deadline on the host). Every export that returns
// text returns a pointer to one buffer, [u32 tag][u32 len][len bytes of UTF-8], owned by the guest and
// valid until the next such call (so the host never frees it: one call per entry).
//
// Why our own build (../shared/spec/runtime-semantics.md section 4): the stock reactors either have no
// eval API or corrupt memory on deep recursion, and QuickJS's memory accounting is wrong on WASI unless
// malloc_usable_size is wired in, which the malloc functions below do.

#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "quickjs.h"

#define EXPORT(name) __attribute__((export_name(#name)))

__attribute__((import_module("host"), import_name("interrupt"))) int host_interrupt(void);

enum {
    TAG_TEXT = 0,       // a string value (JSON text from the entry, or an eval's string result)
    TAG_NONE = 1,       // undefined or null
    TAG_EXCEPTION = 2,  // "Name: message\nstack"
    TAG_STACK = 3,      // the JS stack limit was hit (RangeError: Maximum call stack size exceeded)
    TAG_NOT_TEXT = 4,   // the value is not a string (the text names its type)
    TAG_NO_MEMORY = 5,  // not even the exception could be turned into text
};

static JSRuntime *rt;
static JSContext *ctx;
static JSValue entry;
static uint8_t *out;
static size_t out_cap;

static void *g_js_calloc(void *opaque, size_t count, size_t size) { return calloc(count, size); }
static void *g_js_malloc(void *opaque, size_t size) { return malloc(size); }
static void g_js_free(void *opaque, void *ptr) { free(ptr); }
static void *g_js_realloc(void *opaque, void *ptr, size_t size) { return realloc(ptr, size); }
static size_t g_js_usable(const void *ptr) { return ptr ? malloc_usable_size((void *)ptr) : 0; }

static const JSMallocFunctions malloc_functions = {
    g_js_calloc, g_js_malloc, g_js_free, g_js_realloc, g_js_usable,
};

static int interrupt_handler(JSRuntime *r, void *opaque) { return host_interrupt(); }

// The result buffer. Kept between calls (no free on the host side); NULL only when out of memory.
static uint8_t *reply(uint32_t tag, const char *text, size_t len) {
    size_t need = 8 + len;
    if (need > out_cap) {
        uint8_t *grown = realloc(out, need);
        if (!grown) {
            static uint8_t oom[8] = {TAG_NO_MEMORY, 0, 0, 0, 0, 0, 0, 0};
            return oom;
        }
        out = grown;
        out_cap = need;
    }
    memcpy(out, &tag, 4);
    uint32_t n = (uint32_t)len;
    memcpy(out + 4, &n, 4);
    if (len) memcpy(out + 8, text, len);
    return out;
}

static uint8_t *reply_exception(void) {
    JSValue exc = JS_GetException(ctx);
    uint32_t tag = TAG_EXCEPTION;
    const char *text = JS_ToCString(ctx, exc);
    if (!text) {
        JS_FreeValue(ctx, JS_GetException(ctx));
        JS_FreeValue(ctx, exc);
        return reply(TAG_NO_MEMORY, "", 0);
    }
    if (strstr(text, "Maximum call stack size exceeded") || strstr(text, "stack overflow")) tag = TAG_STACK;
    const char *stack = NULL;
    if (JS_IsObject(exc)) {
        JSValue s = JS_GetPropertyStr(ctx, exc, "stack");
        if (!JS_IsException(s) && !JS_IsUndefined(s)) stack = JS_ToCString(ctx, s);
        else if (JS_IsException(s)) JS_FreeValue(ctx, JS_GetException(ctx));
        JS_FreeValue(ctx, s);
    }
    size_t tlen = strlen(text), slen = stack ? strlen(stack) : 0;
    char *joined = malloc(tlen + 1 + slen + 1);
    uint8_t *r;
    if (!joined) {
        r = reply(tag, text, tlen);
    } else {
        memcpy(joined, text, tlen);
        joined[tlen] = '\n';
        if (slen) memcpy(joined + tlen + 1, stack, slen);
        r = reply(tag, joined, tlen + 1 + slen);
        free(joined);
    }
    JS_FreeCString(ctx, text);
    if (stack) JS_FreeCString(ctx, stack);
    JS_FreeValue(ctx, exc);
    return r;
}

static uint8_t *reply_value(JSValue v) {
    uint8_t *r;
    if (JS_IsException(v)) return reply_exception();
    if (JS_IsUndefined(v) || JS_IsNull(v)) {
        r = reply(TAG_NONE, "", 0);
    } else if (JS_IsString(v)) {
        size_t len;
        const char *s = JS_ToCStringLen(ctx, &len, v);
        if (!s) {
            JS_FreeValue(ctx, v);
            return reply_exception();
        }
        r = reply(TAG_TEXT, s, len);
        JS_FreeCString(ctx, s);
    } else {
        const char *kind = JS_IsNumber(v) ? "number" : JS_IsBool(v) ? "boolean" : JS_IsObject(v) ? "object" : "value";
        r = reply(TAG_NOT_TEXT, kind, strlen(kind));
    }
    JS_FreeValue(ctx, v);
    return r;
}

// Create the runtime and context. mem_limit: QuickJS heap limit in bytes (0: none); stack_size: JS
// stack limit in bytes (must stay below the shadow stack the module was linked with).
EXPORT(g_init) int g_init(uint32_t mem_limit, uint32_t stack_size, int use_interrupt) {
    rt = JS_NewRuntime2(&malloc_functions, NULL);
    if (!rt) return -1;
    JS_SetMemoryLimit(rt, mem_limit);
    JS_SetMaxStackSize(rt, stack_size);
    if (use_interrupt) JS_SetInterruptHandler(rt, interrupt_handler, NULL);
    ctx = JS_NewContext(rt);
    if (!ctx) return -2;
    entry = JS_UNDEFINED;
    return 0;
}

// Change the limits of an initialised runtime (a pre-initialised image made with other limits).
EXPORT(g_set_limits) void g_set_limits(uint32_t mem_limit, uint32_t stack_size) {
    JS_SetMemoryLimit(rt, mem_limit);
    JS_SetMaxStackSize(rt, stack_size);
}

EXPORT(g_alloc) void *g_alloc(uint32_t size) { return malloc(size ? size : 1); }

EXPORT(g_free) void g_free(void *ptr) { free(ptr); }

// Evaluate a global script (UTF-8 at ptr, len bytes; freed here). The reply is the script's value.
EXPORT(g_eval) uint8_t *g_eval(char *ptr, uint32_t len) {
    JS_UpdateStackTop(rt);
    // JS_Eval needs a NUL after the input; the host allocates len + 1 bytes and writes it.
    JSValue v = JS_Eval(ctx, ptr, len, "<input>", JS_EVAL_TYPE_GLOBAL);
    free(ptr);
    return reply_value(v);
}

// Capture the prelude's entry function and delete the global, before any user code runs.
EXPORT(g_capture_entry) int g_capture_entry(void) {
    JSValue global = JS_GetGlobalObject(ctx);
    JSAtom name = JS_NewAtom(ctx, "__statehost_entry");
    entry = JS_GetProperty(ctx, global, name);
    int ok = JS_IsFunction(ctx, entry);
    JS_DeleteProperty(ctx, global, name, 0);
    JS_FreeAtom(ctx, name);
    JS_FreeValue(ctx, global);
    return ok ? 0 : -1;
}

// Call entry(op, arg). buf holds op (op_len bytes) then arg (arg_len bytes); it is freed here.
EXPORT(g_call_entry) uint8_t *g_call_entry(char *buf, uint32_t op_len, uint32_t arg_len) {
    JS_UpdateStackTop(rt);
    JSValue args[2];
    args[0] = JS_NewStringLen(ctx, buf, op_len);
    args[1] = JS_NewStringLen(ctx, buf + op_len, arg_len);
    free(buf);
    if (JS_IsException(args[0]) || JS_IsException(args[1])) {
        JS_FreeValue(ctx, args[0]);
        JS_FreeValue(ctx, args[1]);
        return reply_exception();
    }
    JSValue v = JS_Call(ctx, entry, JS_UNDEFINED, 2, (JSValueConst *)args);
    JS_FreeValue(ctx, args[0]);
    JS_FreeValue(ctx, args[1]);
    return reply_value(v);
}

// Run up to max pending jobs: the count run, or -1 - count when a job threw (g_take_exception).
EXPORT(g_run_jobs) int g_run_jobs(int max) {
    JS_UpdateStackTop(rt);
    int n = 0;
    while (n < max) {
        JSContext *c;
        int r = JS_ExecutePendingJob(rt, &c);
        if (r == 0) break;
        if (r < 0) return -1 - n;
        n++;
    }
    return n;
}

EXPORT(g_take_exception) uint8_t *g_take_exception(void) { return reply_exception(); }

// Bytes QuickJS has allocated (its own accounting, which is correct here).
EXPORT(g_mem_used) uint32_t g_mem_used(void) {
    JSMemoryUsage usage;
    JS_ComputeMemoryUsage(rt, &usage);
    return (uint32_t)usage.malloc_size;
}
