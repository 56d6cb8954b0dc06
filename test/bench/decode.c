/*
 * test/bench/decode.c -- the cost of wsproxy's frame decoder alone.
 *
 * Built from this tree's wsproxy.c (one translation unit, so the decoder's
 * static functions are visible) and run by test/bench/run.sh: it fills a
 * 256 KiB buffer with masked client frames of one size, as a pipelining
 * client sends them, and times frame_decode() over the whole buffer, which
 * unmasks each payload and moves it down over the headers.  The baseline,
 * timed the same way, is memcpy() of the same bytes: what a plain byte
 * relay does with them in user space.  Each figure is the best of 9 passes
 * of 200 rounds; every round first restores the masked input with a copy,
 * timed alone and subtracted.
 *
 * Usage: decode SIZE [text]   prints one key=value line; exits 1 if the
 *                             decoder did not deliver the payload exactly.
 */
#include "../../wsproxy.c"

#define CAP (256 * 1024)
#define PASSES 9
#define ROUNDS 200

static struct frame_dec dec;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Client frames of `size` payload bytes ('a'), masked; returns the count. */
static size_t fill(uint8_t *f, size_t *len, size_t size, int text)
{
    static const uint8_t mask[4] = {0x12, 0x34, 0x56, 0x78};
    size_t n = 0, at = 0, i;
    for (;;) {
        size_t h = size < 126 ? 6 : size < 65536 ? 8 : 14;
        uint8_t *p = f + at;
        if (at + h + size > CAP)
            break;
        p[0] = (uint8_t)(0x80 | (text ? OP_TEXT : OP_BINARY));
        if (size < 126) {
            p[1] = (uint8_t)(0x80 | size);
        } else if (size < 65536) {
            p[1] = 0x80 | 126;
            p[2] = (uint8_t)(size >> 8);
            p[3] = (uint8_t)size;
        } else {
            p[1] = 0x80 | 127;
            for (i = 0; i < 8; i++)
                p[2 + i] = (uint8_t)((uint64_t)size >> (56 - 8 * i));
        }
        memcpy(p + h - 4, mask, 4);
        for (i = 0; i < size; i++)
            p[h + i] = (uint8_t)('a' ^ mask[i & 3]);
        at += h + size;
        n++;
    }
    *len = at;
    return n;
}

/* Seconds per round of `what`: 0 restore only, 1 restore + decode,
 * 2 restore + memcpy; the best of PASSES. */
static double timed(int what, uint8_t *src, uint8_t *buf, uint8_t *dst, size_t len,
                    size_t n, size_t size)
{
    double best = 1e9;
    int pass, k;
    for (pass = 0; pass < PASSES; pass++) {
        double t0 = now_s(), t;
        for (k = 0; k < ROUNDS; k++) {
            size_t pos = 0, out = 0;
            memcpy(buf, src, len);
            if (what == 1 && (frame_decode(&dec, buf, len, &pos, &out) != FRAME_MORE ||
                              pos != len || out != n * size))
                return -1;
            if (what == 2)
                memcpy(dst, buf, len);
            __asm__ volatile("" : : "r"(buf), "r"(dst) : "memory");
        }
        t = (now_s() - t0) / ROUNDS;
        if (t < best)
            best = t;
    }
    return best;
}

int main(int argc, char **argv)
{
    size_t size = argc > 1 ? strtoul(argv[1], NULL, 10) : 64, len, n, i;
    int text = argc > 2 && strcmp(argv[2], "text") == 0;
    uint8_t *src = malloc(CAP), *buf = malloc(CAP), *dst = malloc(CAP);
    double base, decode, copy;
    if (!src || !buf || !dst || size == 0 || size > CAP / 2)
        return 2;
    n = fill(src, &len, size, text);
    base = timed(0, src, buf, dst, len, n, size);
    copy = timed(2, src, buf, dst, len, n, size);
    decode = timed(1, src, buf, dst, len, n, size); /* last: buf is checked */
    for (i = 0; decode >= 0 && i < n * size; i++)
        if (buf[i] != 'a')
            decode = -1;
    if (decode < 0) {
        printf("decode size=%zu verify=bad\n", size);
        return 1;
    }
    printf("decode size=%zu frames=%zu ns_per_frame=%.2f memcpy_ns_per_frame=%.2f verify=ok\n",
           size, n, (decode - base) * 1e9 / (double)n, (copy - base) * 1e9 / (double)n);
    return 0;
}
