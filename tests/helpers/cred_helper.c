/* The process the security tests (tests/tests/security.rs) run as a setuid,
 * file-capability or plain program. It connects to 127.0.0.1:PORT and
 * writes to that socket; what it writes and when depends on MODE:
 *
 *   send FILE      write the contents of FILE (a root-only secret)
 *   undumpable FILE  write "before", make itself undumpable
 *                  (prctl PR_SET_DUMPABLE 0), then write FILE
 *   wait FILE      read FILE, then block reading the socket; when a byte
 *                  arrives, write FILE
 *   block          block reading the socket; when bytes arrive, write
 *                  "answer"
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

static char secret[256];
static ssize_t secret_len;

static void read_secret(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) { perror(path); exit(2); }
    secret_len = read(fd, secret, sizeof secret);
    close(fd);
    if (secret_len <= 0) { fprintf(stderr, "empty secret\n"); exit(2); }
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s MODE PORT [FILE]\n", argv[0]); return 2; }
    const char *mode = argv[1];
    /* Alive for a moment before its first call: qtapd checks a process's
     * credentials in /proc before a member's session sees it, and a
     * process already gone by then is not shown to the member at all. */
    usleep(300000);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("connect"); return 2; }
    char buf[64];
    if (strcmp(mode, "send") == 0 && argc > 3) {
        read_secret(argv[3]);
        write(s, secret, secret_len);
    } else if (strcmp(mode, "undumpable") == 0 && argc > 3) {
        write(s, "before", 6);
        usleep(200000);
        if (prctl(PR_SET_DUMPABLE, 0) != 0) { perror("prctl"); return 2; }
        read_secret(argv[3]);
        write(s, secret, secret_len);
    } else if (strcmp(mode, "wait") == 0 && argc > 3) {
        read_secret(argv[3]);
        if (read(s, buf, 1) != 1) return 2;
        write(s, secret, secret_len);
    } else if (strcmp(mode, "block") == 0) {
        if (read(s, buf, sizeof buf) <= 0) return 2;
        write(s, "answer", 6);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    close(s);
    return 0;
}
