/* The host's side of bench/run, native so that the host baselines measure
 * the machine and not an interpreter:
 *
 *   host randread FILE COUNT THREADS   4 KiB preads at random 4 KiB-aligned
 *                                      offsets, THREADS at once ("depth"):
 *                                      prints IOPS
 *   host seqread FILE                  the whole file in 1 MiB preads:
 *                                      prints MiB/s
 *   host randwrite FILE COUNT EVERY    4 KiB pwrites at random offsets, an
 *                                      fdatasync after every EVERY: IOPS
 *   host count IFACE COUNT             AF_PACKET frames of ethertype 0x88b5
 *                                      on IFACE until COUNT or 2 s quiet:
 *                                      prints "RECEIVED <n> <frames/s>"
 *   host flood IFACE SECONDS           broadcast 60-byte frames of 0x88b5
 *                                      for SECONDS, then "bench-end" markers:
 *                                      prints "SENT <n> <frames/s>"
 *
 * Build: cc -O2 -pthread -o host host.c (bench/run does). Linux only. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096
#define MIB (1 << 20)
#define ETHERTYPE 0x88b5

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* The guest's xorshift64, so both sides draw offsets the same way. */
static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

struct reader {
	int fd;
	uint64_t blocks, count, seed;
};

static void *read_random(void *arg)
{
	struct reader *r = arg;
	char *buf = aligned_alloc(BLOCK, BLOCK);
	for (uint64_t i = 0; i < r->count; i++) {
		off_t off = (off_t)(xorshift(&r->seed) % r->blocks) * BLOCK;
		if (pread(r->fd, buf, BLOCK, off) != BLOCK)
			die("pread");
	}
	free(buf);
	return NULL;
}

static int open_file(const char *path, int flags, uint64_t *blocks)
{
	int fd = open(path, flags);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		die(path);
	*blocks = st.st_size / BLOCK;
	if (*blocks == 0) {
		fprintf(stderr, "%s: smaller than 4 KiB\n", path);
		exit(1);
	}
	return fd;
}

static int randread(const char *path, uint64_t count, int threads)
{
	uint64_t blocks;
	int fd = open_file(path, O_RDONLY, &blocks);
	pthread_t t[256];
	struct reader r[256];
	if (threads < 1 || threads > 256)
		threads = 1;
	double t0 = now();
	for (int i = 0; i < threads; i++) {
		r[i] = (struct reader){fd, blocks, count / threads,
				       0x2545f4914f6cdd1dULL + i};
		if (pthread_create(&t[i], NULL, read_random, &r[i]))
			die("pthread_create");
	}
	for (int i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	printf("%.0f\n", (count / threads) * threads / (now() - t0));
	return 0;
}

static int seqread(const char *path)
{
	uint64_t blocks;
	int fd = open_file(path, O_RDONLY, &blocks);
	char *buf = aligned_alloc(BLOCK, MIB);
	uint64_t mib = blocks * BLOCK / MIB;
	double t0 = now();
	for (uint64_t i = 0; i < mib; i++)
		if (pread(fd, buf, MIB, (off_t)i * MIB) != MIB)
			die("pread");
	printf("%.0f\n", mib / (now() - t0));
	return 0;
}

static int randwrite(const char *path, uint64_t count, uint64_t every)
{
	uint64_t blocks, seed = 0x2545f4914f6cdd1dULL;
	int fd = open_file(path, O_WRONLY, &blocks);
	char *buf = aligned_alloc(BLOCK, BLOCK);
	memset(buf, 0x5a, BLOCK);
	double t0 = now();
	for (uint64_t i = 1; i <= count; i++) {
		off_t off = (off_t)(xorshift(&seed) % blocks) * BLOCK;
		if (pwrite(fd, buf, BLOCK, off) != BLOCK)
			die("pwrite");
		if (i % every == 0 || i == count)
			if (fdatasync(fd))
				die("fdatasync");
	}
	printf("%.0f\n", count / (now() - t0));
	return 0;
}

static int packet_socket(const char *iface)
{
	int s = socket(AF_PACKET, SOCK_RAW, htons(ETHERTYPE));
	int size = 64 << 20;
	struct sockaddr_ll a = {.sll_family = AF_PACKET,
				.sll_protocol = htons(ETHERTYPE),
				.sll_ifindex = (int)if_nametoindex(iface)};
	if (s < 0)
		die("socket(AF_PACKET)");
	if (a.sll_ifindex == 0)
		die(iface);
	setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
	if (bind(s, (struct sockaddr *)&a, sizeof a))
		die("bind");
	return s;
}

static int count_frames(const char *iface, uint64_t count)
{
	int s = packet_socket(iface);
	char buf[2048];
	uint64_t n = 0;
	double first = 0, last = 0;
	printf("READY\n");
	fflush(stdout);
	/* 60 s for the first frame (the VMM boots), then 2 s of quiet ends it. */
	for (int wait = 60000; n < count; wait = 2000) {
		struct pollfd p = {s, POLLIN, 0};
		if (poll(&p, 1, wait) <= 0)
			break;
		while (n < count && recv(s, buf, sizeof buf, MSG_DONTWAIT) > 0) {
			last = now();
			if (n++ == 0)
				first = last;
		}
	}
	printf("RECEIVED %llu %.0f\n", (unsigned long long)n,
	       n > 1 ? (n - 1) / (last - first) : 0.0);
	return 0;
}

static int flood(const char *iface, double seconds)
{
	int s = packet_socket(iface);
	unsigned char frame[60] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
				   0x02, 0x00, 0x00, 0x00, 0x77, 0x01,
				   ETHERTYPE >> 8, ETHERTYPE & 0xff};
	uint64_t sent = 0;
	memcpy(frame + 14, "launcher-bench", 14);
	double t0 = now(), end = t0 + seconds;
	while (now() < end)
		for (int i = 0; i < 256; i++)
			if (send(s, frame, sizeof frame, 0) == sizeof frame)
				sent++;
	double took = now() - t0;
	memset(frame + 14, 0, sizeof frame - 14);
	memcpy(frame + 14, "bench-end", 9);
	for (int i = 0; i < 100; i++) {
		send(s, frame, sizeof frame, 0);
		usleep(10000);
	}
	printf("SENT %llu %.0f\n", (unsigned long long)sent, sent / took);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 5 && !strcmp(argv[1], "randread"))
		return randread(argv[2], strtoull(argv[3], 0, 0), atoi(argv[4]));
	if (argc == 3 && !strcmp(argv[1], "seqread"))
		return seqread(argv[2]);
	if (argc == 5 && !strcmp(argv[1], "randwrite"))
		return randwrite(argv[2], strtoull(argv[3], 0, 0),
				 strtoull(argv[4], 0, 0));
	if (argc == 4 && !strcmp(argv[1], "count"))
		return count_frames(argv[2], strtoull(argv[3], 0, 0));
	if (argc == 4 && !strcmp(argv[1], "flood"))
		return flood(argv[2], atof(argv[3]));
	fprintf(stderr, "usage: see the top of bench/host.c\n");
	return 2;
}
