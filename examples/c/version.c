/* Prints the dmaplane version: the smallest C program linked against the library. */
#include <stdio.h>
#include <string.h>

#include "dmaplane.h"

int main(void) {
    const char *version = dmaplane_version();
    if (version == NULL || strlen(version) == 0) {
        fprintf(stderr, "no version\n");
        return 1;
    }
    printf("dmaplane %s\n", version);
    return 0;
}
