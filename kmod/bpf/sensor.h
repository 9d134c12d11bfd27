/* Record layouts shared by the BPF programs and kmod/_decode.py.
 * Change both together: the Python side unpacks these byte for byte. */
#ifndef IMMUNE_SENSOR_H
#define IMMUNE_SENSOR_H

#define PATH_LEN 256      /* paths as passed to a syscall, NUL included */
#define ARGS_LEN 1024     /* argv bytes kept, NUL-separated */
#define ARG_LEN 256       /* longest single argument read when the exec failed */
#define ARGC_MAX 64
#define COMP_MAX 16       /* path components kept when walking dentries */
#define COMP_LEN 64
#define NAME_LEN 64       /* a file name in watched_names and open_resolved_rec */
#define RULE_NONE 0xffffffffu
#define HEAD_BITS 16
#define HEAD_WORDS (1 << (HEAD_BITS - 6))
#define HEAD_MULT 0x9e3779b97f4a7c15ULL  /* Fibonacci hashing */

enum kind {
	K_EXEC = 1,
	K_FORK,
	K_EXIT,
	K_OPEN,
	K_SETID,
	K_CONNECT,
	K_BIND,
	K_MOUNT,      /* struct mount_rec, on the mounts ring only */
	K_FILE,       /* rename, unlink, link, symlink, chmod, chown, *xattr */
	K_PTRACE,
	K_SIGNAL,
	K_BPF,
	K_MOUNTED,    /* a mount event on the events ring (K_MOUNT is the guard's news) */
	K_MAX,
};

#define RING_KINDS 16     /* ring_limit's entries: a power of two above every kind */

enum verdict { V_ALLOW = 0, V_AUDIT = 1, V_BLOCK = 2 };
enum scope { S_MACHINE = 0, S_CGROUP = 1, S_NETNS = 2 };
enum hook { H_CONNECT = 1, H_BIND = 2 };

enum setid_call {
	C_SETUID = 1, C_SETREUID, C_SETRESUID, C_SETFSUID,
	C_SETGID, C_SETREGID, C_SETRESGID, C_SETFSGID,
};

/* header flags */
#define F_ARGS_TRUNC 1
#define F_PATH_TRUNC 2   /* a path or path component did not fit */
#define F_FOLDED 4       /* an open record standing for `count` identical opens */
#define F_RESOLVED 8     /* an open by a relative path: struct open_resolved_rec */
#define F_IN_DIR 16      /* ... that failed: `resolved` is the directory, `name` the name given */
#define F_UNGUARDED 32   /* an exec from a filesystem the exec guard had not marked */

struct sensor_config {
	__u32 scope;
	__u32 gen;            /* policy generation, copied into every record */
	__u64 netns_cookie;
	__u64 wake_bytes;     /* wake the reader once this much is pending */
	__u64 wake_ns;        /* ... or when the last wake-up is this old */
	__u32 n_excluded;
	__u32 open_heads;     /* 1: the open_heads filter holds every prefix's first 8 bytes */
	__u64 fold_ns;        /* fold a thread's identical audited opens this close; 0: never */
	__u32 watched_dirs;   /* entries in watched_dirs */
	__u32 cgroup_level;   /* S_CGROUP: the scope cgroup's depth below the root */
	__u64 cgroup_id;      /* S_CGROUP: its id (the inode of its directory) */
	__u64 ring_limit[RING_KINDS];  /* by kind: queue a record only while the ring holds less */
	__u32 ns_ids;         /* 1: fill the headers' namespace fields */
	__u32 wake_kinds;     /* bit k: a record of kind k wakes the reader at once (an edge rule wants it) */
	__u32 workloads;      /* 1: connect/bind rules select workloads: look up the caller's tag */
	__u32 _pad_w;
};

struct hdr {
	__u8 kind;
	__u8 flags;
	__u16 gen;
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 euid;
	__u32 gid;
	__u32 vpid;           /* pid as the task's own pid namespace sees it */
	__u64 ts;             /* CLOCK_BOOTTIME ns */
	__u64 cgroup;
	char comm[16];
	__u32 mntns;          /* inode numbers of the task's mount namespace */
	__u32 pidns;          /* ... and of its (active) pid namespace */
};

struct pathbuf {
	__u16 depth;          /* components, leaf first */
	__u16 _pad[3];
	char comp[COMP_MAX][COMP_LEN];
};

struct exec_rec {
	struct hdr h;
	__s32 result;
	__u16 args_len;
	__u16 _pad;
	char filename[PATH_LEN];
	char args[ARGS_LEN + ARG_LEN];  /* slack so each argument read has a constant bound */
	struct pathbuf exe;
	struct pathbuf cwd;
};

struct fork_rec {
	struct hdr h;
	__u32 child_pid;
	__u32 _pad;
};

struct exit_rec {
	struct hdr h;
	__s32 code;           /* wait status, as waitpid() reports it */
	__u32 _pad;
};

struct open_rec {
	struct hdr h;
	__s32 result;
	__u32 flags;
	__u32 rule;           /* first rule whose prefix matched */
	__u32 count;          /* opens this record stands for: 1, or more if F_FOLDED */
	__u16 path_len;       /* NUL included */
	__u16 _pad;
	char path[PATH_LEN];
};

/* An open by a relative path, of a file under a directory the open rules
 * name: the file's own path (components leaf first) instead of the path as
 * passed, which the prefix filter cannot judge. */
struct open_resolved_rec {
	struct hdr h;
	__s32 result;
	__u32 flags;
	__u32 rule;           /* RULE_NONE: userspace matches the resolved path */
	__u32 count;          /* 1 */
	__u16 path_len;       /* 0 */
	__u16 _pad;
	struct pathbuf resolved;
	char name[NAME_LEN];  /* F_IN_DIR */
};

/* watched_dirs: a directory by its device (the kernel's encoding) and inode */
struct dir_key {
	__u64 ino;
	__u32 dev;
	__u32 _pad;
};

#define D_NAMES 1         /* the files directly in it that watched_names lists */
#define D_PARENT 2        /* any file directly in it */
#define D_ANY 3           /* any file at any depth below it ("**") */

struct name_key {
	struct dir_key dir;
	char name[NAME_LEN];  /* NUL-padded; longer names cut (userspace matches) */
};

#define DIR_BITS 12       /* dir_filter: a 4 Kbit filter of watched_dirs' inodes */
#define DIR_WORDS (1 << (DIR_BITS - 6))

struct setid_rec {
	struct hdr h;
	__u32 call;
	__u32 old;
	__u32 new_id;
	__s32 result;
};

struct sock_rec {
	struct hdr h;
	__u16 family;
	__u16 port;           /* host byte order */
	__u8 protocol;
	__u8 verdict;
	__u16 _pad;
	__u32 rule;
	__u8 addr[16];        /* network byte order; IPv4 in the first 4 bytes */
	__u32 _pad2;
};

/* The exec guard's news, on a ring of its own (the mounts ring) read by
 * the guard's marker thread: a mount call that succeeded (the namespace
 * may hold a filesystem not marked yet), or an exec from a filesystem not
 * marked (M_UNGUARDED).  Each wakes the marker at once. */
enum mount_call {
	M_MOUNT = 1, M_MOVE_MOUNT, M_FSMOUNT, M_MOUNT_SETATTR, M_UNGUARDED,
};

struct mount_rec {
	__u8 kind;            /* K_MOUNT */
	__u8 call;            /* enum mount_call */
	__u16 _pad;
	__u32 pid;
	__u32 ppid;           /* asked too if pid is gone by then (mount(8) exits at once) */
	__u32 mntns;
	__s32 result;         /* M_FSMOUNT: the new mount's fd in pid */
	__u32 dev;            /* M_UNGUARDED: the superblock (kernel encoding) */
	__u64 ts;             /* CLOCK_BOOTTIME ns */
};

/* guarded_devs values */
#define G_MARKED 1

/* Written by the cut_tcp/cut_udp iterators, one per connection cut. */
struct cut_rec {
	__u16 family;
	__u16 port;
	__u8 protocol;
	__u8 _pad[3];
	__u32 rule;
	__u32 addr[4];
};

/* LPM keys: [tag (4 bytes), hook, proto, port_hi, port_lo] then the
 * address, so one trie holds both hooks, every workload's rules (tag 0:
 * the rules for processes no selector names) and "any protocol/port" is
 * the value 0. */
#define SOCK_HEAD 8       /* bytes before the address */

struct sock4_key {
	__u32 prefixlen;
	__u8 data[SOCK_HEAD + 4];
};

struct sock6_key {
	__u32 prefixlen;
	__u8 data[SOCK_HEAD + 16];
};

/* A cgroup made while connect/bind rules select workloads (the
 * tp_btf/cgroup_mkdir program's news, on the cgroups ring): userspace
 * matches its path against the globs and containers the kernel cannot,
 * and corrects its tag. */
#define CG_PATH_LEN 256
struct cgroup_rec {
	__u64 id;
	__u64 ts;             /* CLOCK_BOOTTIME ns */
	__u32 tag;            /* what the kernel gave it: by its whole path, else its parent's */
	__u32 level;
	char path[CG_PATH_LEN];
};

struct cg_path_key {
	char path[CG_PATH_LEN];  /* NUL-padded, relative to the cgroup2 root: /system.slice/x.service */
};

struct rule_val {
	__u32 rule;
	__u32 action;         /* enum verdict */
};

struct open_key {
	__u32 prefixlen;
	char data[PATH_LEN];
};

#endif
