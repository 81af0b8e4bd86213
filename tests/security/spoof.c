/* Forged frames from inside a container, for tests/security/test_spoofing.py.
 *
 *   spoof udp <ifname> <src mac> <dst mac> <src ip> <dst ip> <port> <text>
 *   spoof arp <ifname> <sender mac> <sender ip> <dst mac> <target ip>   (an ARP reply)
 *   spoof listen <port> <seconds>     prints "<source ip> <text>" per datagram
 *
 * Raw frames go out through an AF_PACKET socket (CAP_NET_RAW), so nothing of
 * the kernel's own addressing applies: this is what a hostile root can send. */
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netpacket/packet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(2); }

static void parse_mac(const char *text, uint8_t mac[6]) {
    unsigned v[6];
    if (sscanf(text, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) {
        fprintf(stderr, "bad mac %s\n", text);
        exit(2);
    }
    for (int i = 0; i < 6; i++) mac[i] = (uint8_t)v[i];
}

static uint32_t parse_ip(const char *text) {
    struct in_addr a;
    if (inet_pton(AF_INET, text, &a) != 1) { fprintf(stderr, "bad ip %s\n", text); exit(2); }
    return a.s_addr;
}

static uint16_t checksum(const void *data, size_t len) {
    const uint8_t *p = data;
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < len; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (len & 1) sum += (uint32_t)p[len - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return htons((uint16_t)~sum);
}

static void send_frame(const char *ifname, const uint8_t *frame, size_t len) {
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) die("socket");
    struct sockaddr_ll to = {0};
    to.sll_family = AF_PACKET;
    to.sll_ifindex = (int)if_nametoindex(ifname);
    to.sll_halen = 6;
    memcpy(to.sll_addr, frame, 6);
    if (!to.sll_ifindex) die("if_nametoindex");
    if (sendto(fd, frame, len, 0, (struct sockaddr *)&to, sizeof to) != (ssize_t)len) die("sendto");
    close(fd);
}

static int udp(char **argv) {
    uint8_t frame[1514] = {0};
    const char *text = argv[7];
    size_t tlen = strlen(text);
    if (tlen > 1400) tlen = 1400;
    parse_mac(argv[2], frame + 6);       /* ether source */
    parse_mac(argv[3], frame);           /* ether destination */
    frame[12] = 0x08; frame[13] = 0x00;  /* IPv4 */
    uint8_t *ip = frame + 14;
    ip[0] = 0x45; ip[8] = 64; ip[9] = 17;  /* version/ihl, ttl, UDP */
    uint16_t total = htons((uint16_t)(20 + 8 + tlen));
    memcpy(ip + 2, &total, 2);
    uint32_t src = parse_ip(argv[4]), dst = parse_ip(argv[5]);
    memcpy(ip + 12, &src, 4);
    memcpy(ip + 16, &dst, 4);
    uint16_t sum = checksum(ip, 20);
    memcpy(ip + 10, &sum, 2);
    uint8_t *u = ip + 20;
    uint16_t port = htons((uint16_t)atoi(argv[6])), ulen = htons((uint16_t)(8 + tlen));
    memcpy(u, &port, 2);                 /* source port = destination port */
    memcpy(u + 2, &port, 2);
    memcpy(u + 4, &ulen, 2);             /* checksum 0: none, valid for IPv4 */
    memcpy(u + 8, text, tlen);
    size_t len = 14 + 20 + 8 + tlen;
    send_frame(argv[1], frame, len < 60 ? 60 : len);
    return 0;
}

static int arp(char **argv) {
    uint8_t frame[60] = {0};
    uint8_t sender[6];
    parse_mac(argv[2], sender);
    parse_mac(argv[4], frame);           /* ether destination */
    memcpy(frame + 6, sender, 6);
    frame[12] = 0x08; frame[13] = 0x06;  /* ARP */
    uint8_t *a = frame + 14;
    a[1] = 1; a[2] = 0x08; a[4] = 6; a[5] = 4; a[7] = 2;  /* ethernet, IPv4, reply */
    memcpy(a + 8, sender, 6);
    uint32_t sip = parse_ip(argv[3]), tip = parse_ip(argv[5]);
    memcpy(a + 14, &sip, 4);
    memcpy(a + 18, frame, 6);            /* target mac: the destination */
    memcpy(a + 24, &tip, 4);
    send_frame(argv[1], frame, sizeof frame);
    return 0;
}

static int listen_udp(char **argv) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in me = {0};
    me.sin_family = AF_INET;
    me.sin_port = htons((uint16_t)atoi(argv[1]));
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) die("bind");
    struct timeval tv = {atoi(argv[2]), 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        char buf[1500];
        struct sockaddr_in from;
        socklen_t flen = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &flen);
        if (n < 0) return 0;             /* timeout: done */
        buf[n] = 0;
        printf("%s %s\n", inet_ntoa(from.sin_addr), buf);
        fflush(stdout);
    }
}

int main(int argc, char **argv) {
    if (argc == 9 && !strcmp(argv[1], "udp")) return udp(argv + 1);
    if (argc == 7 && !strcmp(argv[1], "arp")) return arp(argv + 1);
    if (argc == 4 && !strcmp(argv[1], "listen")) return listen_udp(argv + 1);
    fprintf(stderr, "usage: spoof udp|arp|listen ...\n");
    return 2;
}
