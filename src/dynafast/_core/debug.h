/* Set to 1 by DYNAFAST_DEBUG=1 at build time (see setup.py); assertions compiled out in release. */
#ifndef DYNAFAST_DEBUG
#define DYNAFAST_DEBUG 0
#endif
