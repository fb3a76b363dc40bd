/*
 * dmaplane C ABI.
 *
 * Only the version query exists so far; engines, clients, copies and hot-removal arrive
 * with the data path. Link with -ldmaplane_ffi (target/<profile>/libdmaplane_ffi.{so,a}).
 */
#ifndef DMAPLANE_H
#define DMAPLANE_H

#ifdef __cplusplus
extern "C" {
#endif

/* The library version, e.g. "0.1.0". The string is static; do not free it. */
const char *dmaplane_version(void);

#ifdef __cplusplus
}
#endif

#endif /* DMAPLANE_H */
