/* A unity build, as an engine that vendors wsproxy.c compiles it: its own
 * system headers come first, then the library and the program in the same
 * translation unit (test/test_hosts.py). */
#include <stdio.h>
#include <string.h>

#include "../../wsproxy.c"
#include "../../program/main.c"
