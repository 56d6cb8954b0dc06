/*
 * pattern.h - the test byte stream shared by loadgen and engine.
 *
 * Byte i of every stream is g_pattern[i % PATTERN_PERIOD].  The period is a
 * prime, so a lost, duplicated or reordered chunk shows up as a mismatch
 * unless it happens to be a multiple of 4093 bytes long.  Checking a chunk
 * is one memcmp against pattern_at(offset), about as cheap as a memcpy.
 */
#ifndef BENCH_PATTERN_H
#define BENCH_PATTERN_H

#include <stdint.h>
#include <stdlib.h>

#define PATTERN_PERIOD 4093u
#define PATTERN_MAX_CHUNK (1024u * 1024u)   /* longest chunk read from pattern_at() */

static unsigned char *g_pattern;

static void pattern_init(void)
{
	uint32_t x = 2463534242u;
	size_t i;

	g_pattern = malloc(PATTERN_PERIOD + PATTERN_MAX_CHUNK);
	if (g_pattern == NULL)
		abort();
	for (i = 0; i < PATTERN_PERIOD; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		g_pattern[i] = (unsigned char)(x >> 24);
	}
	for (; i < PATTERN_PERIOD + PATTERN_MAX_CHUNK; i++)
		g_pattern[i] = g_pattern[i - PATTERN_PERIOD];
}

static const unsigned char *pattern_at(uint64_t off)
{
	return g_pattern + off % PATTERN_PERIOD;
}

#endif
