/*
 * edgepack's instruction-counting TCG plugin for qemu-user (QEMU 7.2, plugin API v1).
 *
 * Counts every guest instruction executed, and some A64 instruction classes (dot-product SDOT/UDOT,
 * int8 matrix multiply SMMLA/UMMLA/USMMLA, SVE, SIMD&FP data processing, loads/stores), with inline
 * adds at translation-block entry: exact when the guest runs one thread. A "mark" snapshot of every
 * counter is taken at each write(2) to the file descriptor `fd` (default 1), so a runner that prints a
 * line after each inference yields exact per-inference counts. Written as JSON to `out` at exit.
 *
 * Debian's qemu-user ships no qemu-plugin.h, so the few prototypes used are declared here.
 * Build: gcc -O2 -shared -fPIC -o libinsn_count.so insn_count.c
 * Use:   qemu-aarch64 -plugin ./libinsn_count.so,out=/path/counts.json,fd=1 ...
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*syscall_cb_t)(qemu_plugin_id_t, unsigned int, int64_t, uint64_t, uint64_t, uint64_t, uint64_t,
                             uint64_t, uint64_t, uint64_t, uint64_t);
typedef void (*udata_cb_t)(qemu_plugin_id_t, void *);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, tb_trans_cb_t);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, enum qemu_plugin_op, void *, uint64_t);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t, syscall_cb_t);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, udata_cb_t, void *);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

enum { TOTAL, DOTPROD, I8MM, SVE, SIMD_FP, LOAD_STORE, N_CLASSES };
static const char *class_names[N_CLASSES] = {"total", "dotprod", "i8mm", "sve", "simd_fp", "load_store"};
static uint64_t counts[N_CLASSES];
#define MAX_MARKS 100000
static uint64_t (*marks)[N_CLASSES];
static size_t n_marks;
static int mark_fd = 1;
static char out_path[4096];

/* The classes of one A64 instruction word (ARM ARM, "A64 instruction set encoding"). */
static void classify(uint32_t w, unsigned *n) {
    if ((w & 0x9FE0FC00u) == 0x0E809400u || (w & 0x9FC0F400u) == 0x0F80E000u) n[DOTPROD]++; /* S/UDOT */
    if ((w & 0xDFE0F400u) == 0x4E80A400u) n[I8MM]++;                          /* SMMLA/UMMLA/USMMLA */
    if ((w & 0x1E000000u) == 0x04000000u) n[SVE]++;                           /* op0 = 0010 */
    if ((w & 0x0E000000u) == 0x0E000000u) n[SIMD_FP]++;                       /* op0 = x111 */
    if ((w & 0x0A000000u) == 0x08000000u) n[LOAD_STORE]++;                    /* op0 = x1x0 */
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    unsigned n[N_CLASSES] = {0};
    size_t insns = qemu_plugin_tb_n_insns(tb);
    n[TOTAL] = (unsigned)insns;
    for (size_t i = 0; i < insns; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint32_t w = 0;
        if (qemu_plugin_insn_size(insn) == 4) {
            memcpy(&w, qemu_plugin_insn_data(insn), 4);
            classify(w, n);
        }
    }
    for (int c = 0; c < N_CLASSES; c++)
        if (n[c]) qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &counts[c], n[c]);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
    if (num == 64 /* aarch64 write */ && (int64_t)a1 == mark_fd && n_marks < MAX_MARKS)
        memcpy(marks[n_marks++], counts, sizeof counts);
}

static void write_json(FILE *f, const uint64_t *c) {
    fputc('{', f);
    for (int i = 0; i < N_CLASSES; i++) fprintf(f, "%s\"%s\": %llu", i ? ", " : "", class_names[i],
                                                (unsigned long long)c[i]);
    fputc('}', f);
}

static void at_exit(qemu_plugin_id_t id, void *p) {
    FILE *f = fopen(out_path, "w");
    if (!f) return;
    fputs("{\"counts\": ", f);
    write_json(f, counts);
    fputs(", \"marks\": [", f);
    for (size_t i = 0; i < n_marks; i++) { if (i) fputs(", ", f); write_json(f, marks[i]); }
    fputs("]}\n", f);
    fclose(f);
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
        else if (strncmp(argv[i], "fd=", 3) == 0) mark_fd = atoi(argv[i] + 3);
        else { fprintf(stderr, "insn_count: unknown argument %s\n", argv[i]); return -1; }
    }
    if (!out_path[0]) { fprintf(stderr, "insn_count: out=FILE is required\n"); return -1; }
    marks = calloc(MAX_MARKS, sizeof *marks);
    if (!marks) return -1;
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
