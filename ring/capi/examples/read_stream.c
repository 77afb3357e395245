/* read_stream SOCKET KEY OUT: read one spate stream to the file OUT ("-" for stdout).
 *
 * Exit status: 0 the stream was read to its end; 3 the stream was aborted; 4 the writer (the
 * consumer daemon) died; 1 any other error. A message goes to stderr on every error.
 *
 * Build: gcc read_stream.c $(pkg-config --cflags --libs spate) -o read_stream */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "spate.h"

#define BLOCK (4u << 20) /* read up to 4 MiB at a time */

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET KEY OUT\n", argv[0]);
        return 1;
    }
    FILE *out = strcmp(argv[3], "-") == 0 ? stdout : fopen(argv[3], "wb");
    if (out == NULL) {
        fprintf(stderr, "read_stream: cannot open %s: %s\n", argv[3], strerror(errno));
        return 1;
    }
    spate_reader *r = spate_connect(argv[1], argv[2]);
    if (r == NULL) {
        fprintf(stderr, "read_stream: %s\n", spate_last_error());
        return 1;
    }
    int code = 0;
    for (;;) {
        const uint8_t *data;
        size_t len;
        int rc = spate_acquire(r, 1, BLOCK, -1, &data, &len, NULL);
        if (rc == SPATE_END) {
            break;
        }
        if (rc != SPATE_OK) {
            fprintf(stderr, "read_stream: %s\n", spate_last_error());
            code = rc == SPATE_ERR_ABORTED ? 3 : rc == SPATE_ERR_WRITER_DEAD ? 4 : 1;
            break;
        }
        if (fwrite(data, 1, len, out) != len) {
            fprintf(stderr, "read_stream: writing %s: %s\n", argv[3], strerror(errno));
            code = 1;
            break;
        }
        if (spate_release(r, len) != SPATE_OK) {
            fprintf(stderr, "read_stream: %s\n", spate_last_error());
            code = 1;
            break;
        }
    }
    unsigned long long n = (unsigned long long)spate_position(r);
    spate_close(r);
    if (fflush(out) != 0 || (out != stdout && fclose(out) != 0)) {
        fprintf(stderr, "read_stream: closing %s: %s\n", argv[3], strerror(errno));
        return 1;
    }
    if (code == 0) {
        fprintf(stderr, "read_stream: %llu bytes\n", n);
    }
    return code;
}
