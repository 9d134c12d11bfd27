// SPDX-License-Identifier: (MIT OR GPL-2.0)
/* SENTINEL IMMUNE kernel sensor: tracepoints for exec, fork, exit, open and
 * the set*id family; cgroup sock_addr hooks that audit or refuse connect and
 * bind.  Exec and open BLOCK verdicts are fanotify's job (kmod/_fanotify.py);
 * these programs only observe those calls and report their result. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "sensor.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define ENOENT 2
#define AF_INET 2
#define AF_INET6 10

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);  /* the loader sets the real size */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, K_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sensor_config);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} excluded SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} scope_cgroup SEC(".maps");

/* Each thread's effective ids as last seen: at fork, exec and set*id, and
 * for threads older than the sensor by the seed_ids iterator at start.  A
 * set*id call reports its old id from here at sys_exit, because hooking
 * sys_enter would cost every syscall on the machine (about 6% on the open
 * loop) for a call that is rare. */
struct ids {
	__u32 euid;
	__u32 egid;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ids);
} task_ids SEC(".maps");

/* Policy, filled by kmod/_policy.py through the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct open_key);
	__type(value, __u32);
} open_prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);  /* a workload's tag repeats the rules for everyone */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sock4_key);
	__type(value, struct rule_val);
} sock4_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sock6_key);
	__type(value, struct rule_val);
} sock6_rules SEC(".maps");

/* Workloads for connect and bind (kmod/_workloads.py): a cgroup v2 id ->
 * the tag of the set of selectors (match.cgroup, match.container_*) its
 * processes meet.  Every cgroup of a workload has an entry, its
 * sub-cgroups too, so the hot path is one hash lookup.  A cgroup made
 * later gets its tag at mkdir, before any process can enter it: by its
 * whole path (cg_paths: the selectors without wildcards) or else its
 * parent's; userspace corrects it for globs and containers. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u32);
} cgroup_tags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cg_path_key);
	__type(value, __u32);
} cg_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cg_path_key);
} cg_path_scratch SEC(".maps");

/* struct cgroup_rec, for the workload thread: apart from the events, so
 * a tag is corrected without waiting behind a backlog. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 10);
} cgroups SEC(".maps");

/* A 64 Kbit filter of the first 8 bytes of every open prefix (when all are
 * at least that long): most paths are turned away by one 8-byte read and a
 * bit test, before any string copy or trie walk.  kmod/_policy.py hashes the
 * same way (head_bit). */
struct heads {
	__u64 words[HEAD_WORDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct heads);
} open_heads SEC(".maps");

/* Directories the open rules name (kmod/_policy.py open_dirs), for opens by
 * relative paths: a filter of their inodes, then the directories, then for
 * D_NAMES directories the file names. */
struct dir_filter {
	__u64 words[DIR_WORDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dir_filter);
} dir_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct dir_key);
	__type(value, __u8);
} watched_dirs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct name_key);
	__type(value, __u8);
} watched_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct name_key);
} name_scratch SEC(".maps");

/* Directories the open rules name that did not exist at load (or reload):
 * each by its nearest existing ancestor and the name of its first missing
 * component (/var/spool + "cron" for /var/spool/cron/crontabs), so a file
 * in one made later is found by name on the way up.  pending_filter holds
 * pending_bits() of each: the ancestor's inode and the name's first 8 bytes,
 * so a walk through a busy ancestor (/, /root) reads no name. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dir_filter);
} pending_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct name_key);
	__type(value, __u8);
} pending_dirs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct name_key);
} pending_scratch SEC(".maps");

/* Scratch space too big for the 512-byte stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct open_key);
} open_key_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct open_rec);
} open_scratch SEC(".maps");

/* The exec guard (kmod/_fanotify.py): the superblocks (device, the
 * kernel's encoding) it has marked for FAN_OPEN_EXEC_PERM, whether it is
 * on at all, and when an exec from each superblock it had not marked last
 * asked the marker to mark it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} guarded_devs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} exec_guard SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u64);
} unguarded_asked SEC(".maps");

/* struct mount_rec for the guard's marker thread, apart from the events:
 * its news must not wait behind a backlog of events, nor for anyone to
 * drain them. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 10);
} mounts SEC(".maps");

__u64 last_wake = 0;

/* Kernel memory through a plain pointer, read with direct loads (which fault
 * safely) instead of a helper call per field. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define KERNEL(type, p) ((type *)bpf_rdonly_cast((p), bpf_core_type_id_kernel(type)))

static __always_inline struct sensor_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&settings, &zero);
}

static __always_inline void count_drops(__u32 kind, __u32 lost)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &kind);
	if (n)
		*n += lost;
}

/* Batch wake-ups: a wake-up per record costs the producer a cross-CPU
 * wake-up (the open loop fell to 0.33x).  Wake when the pending data crosses
 * wake_bytes (once per crossing: a reader that is awake polls on its own,
 * and a wake-up per record above the mark was an interrupt storm) or when
 * the last wake-up is wake_ns old; the reader's own timer collects the tail
 * of a burst.  A kind in wake_kinds skips the batching: the agent's edge
 * rules act on it, and 20 ms of waiting would be most of their answer.
 * ``reserved``: the record already counts in the pending data. */
static __always_inline __u64 wake_flags(struct sensor_config *c, __u32 kind, __u64 size, int reserved)
{
	if ((c->wake_kinds >> (kind & 31)) & 1)
		return BPF_RB_FORCE_WAKEUP;
	__u64 after = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + (reserved ? 0 : size);
	if (after >= c->wake_bytes && after - size < c->wake_bytes)
		return BPF_RB_FORCE_WAKEUP;
	__u64 now = bpf_ktime_get_boot_ns();
	if (now - last_wake >= c->wake_ns) {
		last_wake = now;
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

/* Priority by reserved space.  One ring keeps every event in the order it
 * happened (the agent relies on it: a fork before its child's events, an
 * exec before what the new image does, an exit last), but each kind may fill
 * it only up to its limit, ring_limit[kind]: the cheaper a call is to repeat,
 * the smaller its share (kmod/_linux.py RING_SHARES).  So a storm of opens,
 * connects or set*id calls is dropped and counted while exec, fork and exit
 * still have the rest of the ring.  The check and the reservation are not
 * one step: CPUs racing past it overshoot the limit by a record each, far
 * less than the space kept above it. */
static __always_inline int within_limit(struct sensor_config *c, __u32 kind, __u64 size)
{
	__u64 after = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + size + BPF_RINGBUF_HDR_SZ;
	return after <= c->ring_limit[kind & (RING_KINDS - 1)];
}

/* A record of this kind and size to fill and submit, or NULL: no room for
 * it, counted as ``n`` lost (a folded open stands for many). */
static __always_inline void *reserve(struct sensor_config *c, __u32 kind, __u64 size, __u32 n)
{
	void *r = within_limit(c, kind, size) ? bpf_ringbuf_reserve(&events, size, 0) : NULL;
	if (!r)
		count_drops(kind, n);
	return r;
}

/* The same for a record built elsewhere, copied into the ring. */
static __always_inline void send(struct sensor_config *c, __u32 kind, void *data, __u64 size)
{
	if (!within_limit(c, kind, size) ||
	    bpf_ringbuf_output(&events, data, size, wake_flags(c, kind, size, 0)))
		count_drops(kind, 1);
}

/* A filter of 2^bits bits (struct heads, struct dir_filter), filled by
 * kmod/_policy.py bitmap(): Fibonacci hashing of a u64. */
static __always_inline int in_filter(const __u64 *words, __u32 n_words, __u64 v, int bits)
{
	__u32 bit = (v * HEAD_MULT) >> (64 - bits);
	return (words[(bit >> 6) & (n_words - 1)] >> (bit & 63)) & 1;
}

static __always_inline int excluded_pid(struct sensor_config *c, __u32 tgid)
{
	return c->n_excluded && bpf_map_lookup_elem(&excluded, &tgid);
}

/* For tracepoints: is the current task one this sensor watches? */
static __always_inline int in_scope(struct sensor_config *c)
{
	if (excluded_pid(c, bpf_get_current_pid_tgid() >> 32))
		return 0;
	if (c->scope == S_CGROUP)
		return bpf_current_task_under_cgroup(&scope_cgroup, 0) == 1;
	if (c->scope == S_NETNS) {
		struct task_struct *t = (void *)bpf_get_current_task();
		return BPF_CORE_READ(t, nsproxy, net_ns, net_cookie) == c->netns_cookie;
	}
	return 1;
}

static __always_inline void remember_ids(struct task_struct *t)
{
	struct ids *v = bpf_task_storage_get(&task_ids, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (v) {
		v->euid = BPF_CORE_READ(t, cred, euid.val);
		v->egid = BPF_CORE_READ(t, cred, egid.val);
	}
}

/* The task's mount and pid namespaces and its pid as seen in its own pid
 * namespace: direct loads, no helper call (see bench/bench_sensor.py for
 * what they cost). */
static __always_inline void fill_ns(struct hdr *h, struct task_struct *task, struct sensor_config *c)
{
	if (!c->ns_ids) {
		h->vpid = h->mntns = h->pidns = 0;
		return;
	}
	struct task_struct *t = KERNEL(struct task_struct, task);
	h->mntns = t->nsproxy->mnt_ns->ns.inum;  /* 0 if nsproxy is gone (a load of NULL reads 0) */
	struct pid *p = t->group_leader->thread_pid;
	__u32 level = p->level & 31;  /* MAX_PID_NS_LEVEL */
	/* the target kernel's sizes, not this build's: the object is prebuilt */
	struct upid *u = KERNEL(struct upid, (void *)p + bpf_core_field_offset(struct pid, numbers) +
					     level * bpf_core_type_size(struct upid));
	h->vpid = u->nr;
	h->pidns = u->ns->ns.inum;
}

static __always_inline void fill_hdr(struct hdr *h, __u8 kind, struct sensor_config *c)
{
	struct task_struct *t = (void *)bpf_get_current_task();
	__u64 pt = bpf_get_current_pid_tgid();
	__u64 ug = bpf_get_current_uid_gid();

	h->kind = kind;
	h->flags = 0;
	h->gen = c->gen;
	h->pid = pt >> 32;
	h->tid = (__u32)pt;
	h->ppid = BPF_CORE_READ(t, real_parent, tgid);
	h->uid = (__u32)ug;
	h->gid = ug >> 32;
	h->euid = BPF_CORE_READ(t, cred, euid.val);
	h->ts = bpf_ktime_get_boot_ns();
	h->cgroup = bpf_get_current_cgroup_id();
	bpf_get_current_comm(h->comm, sizeof(h->comm));
	fill_ns(h, t, c);
}

/* Walk a path's dentries up to the task's root, crossing mounts, keeping the
 * names leaf first; userspace joins them.  bpf_loop keeps the verifier's work
 * to one pass over the body; very deep paths are cut and flagged. */
struct walk {
	struct dentry *d;
	struct vfsmount *vm;
	struct mount *m;
	struct dentry *root_d;
	struct vfsmount *root_m;
	__u32 slot;
	__u32 depth;
	__u8 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct pathbuf);
} path_scratch SEC(".maps");

static long walk_step(__u32 i, struct walk *w)
{
	/* locals, so CO-RE relocates only the kernel types */
	struct dentry *d = w->d;
	struct vfsmount *vm = w->vm;
	struct mount *m = w->m;
	struct pathbuf *pb = bpf_map_lookup_elem(&path_scratch, &w->slot);

	if (!pb || (d == w->root_d && vm == w->root_m))
		return 1;
	if (d == BPF_CORE_READ(vm, mnt_root)) {
		struct mount *parent = BPF_CORE_READ(m, mnt_parent);
		if (parent == m)
			return 1;
		w->d = BPF_CORE_READ(m, mnt_mountpoint);
		w->m = parent;
		w->vm = (void *)parent + bpf_core_field_offset(struct mount, mnt);
		return 0;
	}
	struct dentry *up = BPF_CORE_READ(d, d_parent);
	/* a file in no directory (memfd_create's: "memfd:NAME") keeps its name */
	int orphan = up == d;
	if (orphan && w->depth)
		return 1;
	if (w->depth >= COMP_MAX) {
		w->flags |= F_PATH_TRUNC;
		return 1;
	}
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	if (bpf_probe_read_kernel_str(pb->comp[w->depth & (COMP_MAX - 1)], COMP_LEN, name) == COMP_LEN)
		w->flags |= F_PATH_TRUNC;
	w->depth++;
	w->d = up;
	return orphan;
}

static __always_inline __u8 read_path(struct pathbuf *out, __u32 slot, const struct path *p,
				      const struct path *root)
{
	struct walk w = {.slot = slot};
	w.d = BPF_CORE_READ(p, dentry);
	w.vm = BPF_CORE_READ(p, mnt);
	w.m = (void *)w.vm - bpf_core_field_offset(struct mount, mnt);
	w.root_d = BPF_CORE_READ(root, dentry);
	w.root_m = BPF_CORE_READ(root, mnt);
	bpf_loop(COMP_MAX + 8, walk_step, &w, 0);

	struct pathbuf *pb = bpf_map_lookup_elem(&path_scratch, &slot);
	if (pb)
		bpf_probe_read_kernel(out, sizeof(*out), pb);
	out->depth = w.depth;
	return w.flags;
}

static __always_inline __u8 read_exe_cwd(struct exec_rec *r, int with_exe)
{
	struct task_struct *t = (void *)bpf_get_current_task();
	struct fs_struct *fs = BPF_CORE_READ(t, fs);
	__u8 flags = 0;

	r->exe.depth = 0;
	r->cwd.depth = 0;
	if (!fs)
		return 0;
	if (with_exe) {
		struct file *f = BPF_CORE_READ(t, mm, exe_file);
		if (f)
			flags |= read_path(&r->exe, 0, &f->f_path, &fs->root);
	}
	flags |= read_path(&r->cwd, 1, &fs->pwd, &fs->root);
	return flags;
}

/* ---- syscall arguments at sys_exit ----------------------------------------
 *
 * Each syscall tracepoint attached costs every such call its own program run
 * (on the open/close loop, enter plus exit cost twice what exit alone does).
 * So opens and failed execs are seen at sys_exit only: the caller's saved
 * registers still hold the arguments and its memory is still there. */

static __always_inline struct pt_regs *user_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

#include "procs.bpf.h"  /* ptrace, signals, BPF loads, mounts, fileless exec */

/* ---- the exec guard's news ----------------------------------------------
 *
 * fanotify refuses an exec only from a filesystem the guard has marked
 * (FAN_MARK_FILESYSTEM, one superblock at a time), and a container runtime
 * or `unshare -m` mounts new ones (an overlay root, a tmpfs /tmp) in mount
 * namespaces of their own at any time.  So every mount call that succeeds
 * wakes the guard's marker at once to mark what is new in the caller's mount
 * namespace, and an exec from a superblock it has not marked yet (it came
 * first, or no mount call was seen) is flagged F_UNGUARDED and wakes it too. */

static __always_inline void tell_marker(__u8 call, __s32 result, __u32 dev)
{
	struct mount_rec *r = bpf_ringbuf_reserve(&mounts, sizeof(*r), 0);
	if (!r) {
		count_drops(K_MOUNT, 1);
		return;
	}
	struct task_struct *t = KERNEL(struct task_struct, (void *)bpf_get_current_task());
	r->kind = K_MOUNT;
	r->call = call;
	r->_pad = 0;
	r->pid = bpf_get_current_pid_tgid() >> 32;
	r->ppid = t->real_parent->tgid;
	r->mntns = t->nsproxy->mnt_ns->ns.inum;
	r->result = result;
	r->dev = dev;
	r->ts = bpf_ktime_get_boot_ns();
	bpf_ringbuf_submit(r, BPF_RB_FORCE_WAKEUP);  /* not the events' 20 ms batching */
}

#define MOUNT_NEWS(name, call)                                                \
	SEC("tracepoint/syscalls/sys_exit_" #name)                            \
	int exit_##name(struct trace_event_raw_sys_exit *ctx)                 \
	{                                                                     \
		if (ctx->ret >= 0)                                            \
			tell_marker(call, ctx->ret, 0);                       \
		mounted(call, ctx->ret);                                      \
		return 0;                                                     \
	}

MOUNT_NEWS(mount, M_MOUNT)
MOUNT_NEWS(move_mount, M_MOVE_MOUNT)
/* A detached mount, reachable only through the returned fd until it is
 * moved into place, and already a way to exec (execveat on the fd). */
MOUNT_NEWS(fsmount, M_FSMOUNT)
/* No new superblock, but cheap: a mount made executable again is looked at. */
MOUNT_NEWS(mount_setattr, M_MOUNT_SETATTR)

#define SB_KERNMOUNT (1 << 22)
#define SB_NOUSER (1 << 31)
#define FS_OPEN_EXEC_PERM 0x00040000
#define ASK_AGAIN_NS 100000000ULL  /* against an exec storm from one the marker cannot mark */

/* Is the image the current task just exec'd on a superblock the guard has
 * not marked, while the guard is on?  Then ask the marker (at most every
 * 100 ms per device number).  Marked means both: the superblock carries an
 * exec permission mark (its own s_fsnotify_mask: a superblock gone with its
 * mark may leave its device number to a new one, which the map would still
 * list), and it is one the guard marked (guarded_devs: not another group's).
 * Superblocks no path reaches (memfd, the kernel's internal mounts) can
 * never be marked: not flagged. */
static __always_inline int exec_unguarded(void)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&exec_guard, &zero);
	if (!on || !*on)
		return 0;
	struct task_struct *t = KERNEL(struct task_struct, (void *)bpf_get_current_task());
	struct super_block *sb = t->mm->exe_file->f_inode->i_sb;
	if (!sb)
		return 0;
	sb = KERNEL(struct super_block, sb);
	if (sb->s_flags & (SB_KERNMOUNT | SB_NOUSER))
		return 0;
	__u32 dev = sb->s_dev;
	if (sb->s_fsnotify_mask & FS_OPEN_EXEC_PERM && bpf_map_lookup_elem(&guarded_devs, &dev))
		return 0;
	__u64 now = bpf_ktime_get_boot_ns();
	__u64 *asked = bpf_map_lookup_elem(&unguarded_asked, &dev);
	if (!asked || now - *asked >= ASK_AGAIN_NS) {
		bpf_map_update_elem(&unguarded_asked, &dev, &now, BPF_ANY);
		tell_marker(M_UNGUARDED, 0, dev);
	}
	return 1;
}

/* ---- exec ---------------------------------------------------------------- */

/* A failed exec is reported here; a successful one at sched_process_exec. */
static __always_inline int exec_failed(long ret, const char *filename, const char *const *argv)
{
	/* a PATH search fails with ENOENT once per directory: noise, not news */
	if (ret >= 0 || ret == -ENOENT)
		return 0;
	struct sensor_config *c = get_config();
	if (!c || !in_scope(c))
		return 0;
	struct exec_rec *r = reserve(c, K_EXEC, sizeof(*r), 1);
	if (!r)
		return 0;
	fill_hdr(&r->h, K_EXEC, c);
	r->result = ret;
	if (bpf_probe_read_user_str(r->filename, PATH_LEN, filename) == PATH_LEN)
		r->h.flags |= F_PATH_TRUNC;

	__u32 off = 0;
	for (int i = 0; i < ARGC_MAX; i++) {
		const char *arg = NULL;
		if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) || !arg)
			break;
		if (off >= ARGS_LEN) {
			r->h.flags |= F_ARGS_TRUNC;
			break;
		}
		long n = bpf_probe_read_user_str(&r->args[off & (ARGS_LEN - 1)], ARG_LEN, arg);
		if (n <= 0)
			break;
		if (n == ARG_LEN)
			r->h.flags |= F_ARGS_TRUNC;
		off += n;
		if (i == ARGC_MAX - 1)
			r->h.flags |= F_ARGS_TRUNC;
	}
	if (off > ARGS_LEN) {
		off = ARGS_LEN;
		r->h.flags |= F_ARGS_TRUNC;
	}
	r->args_len = off;
	r->h.flags |= read_exe_cwd(r, 0);
	bpf_ringbuf_submit(r, wake_flags(c, K_EXEC, sizeof(*r), 1));
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_execve")
int exit_execve(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret >= 0)
		return 0;
	struct pt_regs *regs = user_regs();
	return exec_failed(ctx->ret, (void *)PT_REGS_PARM1_SYSCALL(regs),
			   (void *)PT_REGS_PARM2_SYSCALL(regs));
}

SEC("tracepoint/syscalls/sys_exit_execveat")
int exit_execveat(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret >= 0)
		return 0;
	struct pt_regs *regs = user_regs();
	return exec_failed(ctx->ret, (void *)PT_REGS_PARM2_SYSCALL(regs),
			   (void *)PT_REGS_PARM3_SYSCALL(regs));
}

SEC("tracepoint/sched/sched_process_exec")
int sched_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	remember_ids(bpf_get_current_task_btf());  /* a set-user-ID image */
	struct sensor_config *c = get_config();
	if (!c || !in_scope(c))
		return 0;
	struct exec_rec *r = reserve(c, K_EXEC, sizeof(*r), 1);
	if (!r)
		return 0;
	fill_hdr(&r->h, K_EXEC, c);
	r->result = 0;
	unsigned int loc = ctx->__data_loc_filename & 0xffff;
	if (bpf_probe_read_kernel_str(r->filename, PATH_LEN, (void *)ctx + loc) == PATH_LEN)
		r->h.flags |= F_PATH_TRUNC;

	/* argv as the new image sees it: NUL-separated, like /proc/PID/cmdline */
	struct task_struct *t = (void *)bpf_get_current_task();
	struct mm_struct *mm = BPF_CORE_READ(t, mm);
	unsigned long start = BPF_CORE_READ(mm, arg_start);
	unsigned long len = BPF_CORE_READ(mm, arg_end) - start;
	if (len > ARGS_LEN) {
		len = ARGS_LEN;
		r->h.flags |= F_ARGS_TRUNC;
	}
	barrier_var(len);
	if (len > ARGS_LEN)
		len = ARGS_LEN;
	if (bpf_probe_read_user(r->args, len, (void *)start))
		len = 0;
	r->args_len = len;
	r->h.flags |= read_exe_cwd(r, 1);
	if (exec_unguarded())
		r->h.flags |= F_UNGUARDED;
	r->h.flags |= exec_fileless(c);
	bpf_ringbuf_submit(r, wake_flags(c, K_EXEC, sizeof(*r), 1));
	return 0;
}

/* ---- folding repeated opens ---------------------------------------------
 *
 * A thread opening the same audited file in a loop (a storm of reads of
 * /etc/shadow) fills the ring faster than any reader drains it.  Within
 * fold_ns of sending an open, the same thread's identical opens (path,
 * flags, outcome, rule) are counted instead of sent.  The count goes out as
 * one F_FOLDED record, standing for that many opens, when the thread sends
 * any other open, sends this one again after fold_ns, or exits, or when the
 * reader runs flush_folds (it does, fold_ns after draining an open).  So no
 * open is dropped: each is in exactly one record's count. */
struct fold_slot {
	__s32 result;         /* -errno, or 0 for any fd */
	__u32 flags;
	__u32 rule;
	__u32 len;            /* path bytes, NUL included */
	char path[PATH_LEN];
};

/* Two slots: a thread sending a new open writes the other slot, then flips
 * cur, so a concurrent flush_folds (which reads cur before taking the count)
 * never copies a slot being written. */
struct fold {
	__u64 sent;           /* when slot[cur] was last sent */
	__u64 last;           /* the latest open folded */
	__u32 count;          /* folded and not sent yet */
	__u32 cur;
	struct fold_slot slot[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct fold);
} task_folds SEC(".maps");

static __always_inline int same_open(struct fold_slot *s, struct open_key *k, long n,
				     __u32 flags, __s32 result, __u32 rule)
{
	if (s->len != n || s->flags != flags || s->result != result || s->rule != rule)
		return 0;
	for (int i = 0; i < PATH_LEN / 8; i++) {
		long left = n - i * 8;
		if (left <= 0)
			break;
		__u64 a, b;
		__builtin_memcpy(&a, &s->path[i * 8], 8);
		__builtin_memcpy(&b, &k->data[i * 8], 8);
		if (left < 8) {  /* past the NUL: whatever the buffers held before */
			__u64 keep = (1ULL << (left * 8)) - 1;
			a &= keep;
			b &= keep;
		}
		if (a != b)
			return 0;
	}
	return 1;
}

static __always_inline void send_folds(struct task_struct *t, struct sensor_config *c)
{
	struct fold *f = bpf_task_storage_get(&task_folds, t, 0, 0);
	if (!f || !f->count)
		return;
	struct fold_slot *s = &f->slot[f->cur & 1];  /* before taking the count */
	__u32 n = __sync_lock_test_and_set(&f->count, 0);
	if (!n)
		return;
	struct open_rec *r = reserve(c, K_OPEN, sizeof(*r), n);
	if (!r)
		return;
	r->h.kind = K_OPEN;
	r->h.flags = F_FOLDED | (s->len >= PATH_LEN ? F_PATH_TRUNC : 0);
	r->h.gen = c->gen;
	r->h.pid = BPF_CORE_READ(t, tgid);
	r->h.tid = BPF_CORE_READ(t, pid);
	r->h.ppid = BPF_CORE_READ(t, real_parent, tgid);
	r->h.uid = BPF_CORE_READ(t, cred, uid.val);
	r->h.euid = BPF_CORE_READ(t, cred, euid.val);
	r->h.gid = BPF_CORE_READ(t, cred, gid.val);
	fill_ns(&r->h, t, c);
	r->h.ts = f->last;
	r->h.cgroup = BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
	BPF_CORE_READ_STR_INTO(&r->h.comm, t, comm);
	r->result = s->result;
	r->flags = s->flags;
	r->rule = s->rule;
	r->count = n;
	r->path_len = s->len;
	r->_pad = 0;
	bpf_probe_read_kernel(r->path, PATH_LEN, s->path);
	bpf_ringbuf_submit(r, wake_flags(c, K_OPEN, sizeof(*r), 1));
}

/* 1: folded, send nothing.  0: send it (after any folds of the open before). */
static __always_inline int fold_open(struct sensor_config *c, struct open_key *k, long n,
				     __u32 flags, long ret, __u32 rule)
{
	if (!c->fold_ns)
		return 0;
	struct task_struct *t = bpf_get_current_task_btf();
	struct fold *f = bpf_task_storage_get(&task_folds, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!f)
		return 0;
	__s32 result = ret < 0 ? ret : 0;
	__u64 now = bpf_ktime_get_boot_ns();
	if (now - f->sent < c->fold_ns && same_open(&f->slot[f->cur & 1], k, n, flags, result, rule)) {
		f->last = now;
		__sync_fetch_and_add(&f->count, 1);
		return 1;
	}
	send_folds(t, c);
	struct fold_slot *next = &f->slot[(f->cur & 1) ^ 1];
	next->result = result;
	next->flags = flags;
	next->rule = rule;
	next->len = n;
	bpf_probe_read_kernel(next->path, PATH_LEN, k->data);
	f->cur ^= 1;
	f->sent = now;
	return 0;
}

/* Run by the reader: threads gone quiet send what they folded. */
SEC("iter/task")
int flush_folds(struct bpf_iter__task *ctx)
{
	struct task_struct *t = ctx->task;
	struct sensor_config *c = get_config();
	if (t && c)
		send_folds(t, c);
	return 0;
}

/* ---- fork and exit ----------------------------------------------------- */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	remember_ids(child);  /* threads too: each has its own ids */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;  /* a new thread, not a new process */
	struct sensor_config *c = get_config();
	if (!c || !in_scope(c))
		return 0;
	struct fork_rec *r = reserve(c, K_FORK, sizeof(*r), 1);
	if (!r)
		return 0;
	fill_hdr(&r->h, K_FORK, c);
	r->child_pid = BPF_CORE_READ(child, tgid);
	r->_pad = 0;
	bpf_ringbuf_submit(r, wake_flags(c, K_FORK, sizeof(*r), 1));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *task)
{
	struct sensor_config *c = get_config();
	if (!c)
		return 0;
	send_folds(task, c);  /* every thread: its folded opens die with it */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;  /* other threads of the process still run */
	if (!in_scope(c))
		return 0;
	struct exit_rec *r = reserve(c, K_EXIT, sizeof(*r), 1);
	if (!r)
		return 0;
	fill_hdr(&r->h, K_EXIT, c);
	r->code = BPF_CORE_READ(task, exit_code);
	r->_pad = 0;
	bpf_ringbuf_submit(r, wake_flags(c, K_EXIT, sizeof(*r), 1));
	return 0;
}

/* ---- open -------------------------------------------------------------- */

#define DIR_DEPTH 8

#define AT_FDCWD -100

/* The watched_dirs entry that covers a file DEPTH directories below DIR (0:
 * directly in it), or 0. */
static __always_inline __u8 dir_covers(struct dir_filter *filter, struct dentry *dir, int depth,
				       struct dir_key *key)
{
	key->ino = dir->d_inode->i_ino;
	if (!in_filter(filter->words, DIR_WORDS, key->ino, DIR_BITS))
		return 0;
	key->dev = dir->d_sb->s_dev;
	__u8 *v = bpf_map_lookup_elem(&watched_dirs, key);
	return v && (depth == 0 || *v == D_ANY) ? *v : 0;
}

/* Is DIR the existing ancestor of a directory the rules name that was
 * missing at load, and BELOW (its child on the way up) that directory's
 * first missing component?  Then userspace judges the file's whole path. */
static __always_inline __u8 pending_covers(struct dir_filter *filter, struct dentry *dir,
					   struct dentry *below)
{
	__u32 zero = 0;
	__u64 head = 0;
	__u32 len = below->d_name.len;
	bpf_probe_read_kernel(&head, sizeof(head), below->d_name.name);
	if (len < 8)
		head &= (1ULL << (len * 8)) - 1;
	/* kmod/_linux.py _pending_bit */
	if (!in_filter(filter->words, DIR_WORDS, dir->d_inode->i_ino ^ (head * HEAD_MULT), DIR_BITS))
		return 0;
	struct name_key *pk = bpf_map_lookup_elem(&pending_scratch, &zero);
	if (!pk)
		return 0;
	pk->dir.ino = dir->d_inode->i_ino;
	pk->dir.dev = dir->d_sb->s_dev;
	pk->dir._pad = 0;
	__builtin_memset(pk->name, 0, NAME_LEN);
	bpf_probe_read_kernel_str(pk->name, NAME_LEN, below->d_name.name);
	return bpf_map_lookup_elem(&pending_dirs, pk) ? D_ANY : 0;
}

/* A relative path says nothing by itself (`cd /etc; cat shadow`).  An open
 * that succeeded is judged by the directories above the opened file, up to
 * DIR_DEPTH; one that failed has no file, so by the directory it started
 * from (the cwd or dirfd) with the name as given.  If a watched directory
 * covers it, the path (the file's, or the directory's and the name) goes to
 * userspace to match.  Most directories are turned away by a bit test on
 * their inode number. */
static __always_inline int open_relative(struct sensor_config *c, long ret, __u32 flags, int dfd,
					 const char *upath)
{
	__u32 zero = 0;
	struct dir_filter *filter = bpf_map_lookup_elem(&dir_filter, &zero);
	struct name_key *nk = bpf_map_lookup_elem(&name_scratch, &zero);
	struct dir_filter *pending = bpf_map_lookup_elem(&pending_filter, &zero);
	if (!c->watched_dirs || !filter || !nk || !pending)
		return 0;
	struct task_struct *t = bpf_get_current_task_btf();
	struct file **fds = (void *)t->files->fdt->fd;
	void *raw = NULL;
	const struct path *where;  /* the file's path, or (failed) the start directory's */
	__u8 how = 0;
	__builtin_memset(nk->name, 0, NAME_LEN);
	if (ret >= 0) {
		if (bpf_probe_read_kernel(&raw, sizeof(raw), &fds[ret]) || !raw)
			return 0;
		struct file *f = KERNEL(struct file, raw);
		struct dentry *d = f->f_path.dentry;
		for (int i = 0; i < DIR_DEPTH && !how; i++) {
			struct dentry *up = d->d_parent;
			if (!up || up == d)
				break;
			how = dir_covers(filter, up, i, &nk->dir) ?: pending_covers(pending, up, d);
			d = up;
		}
		if (how == D_NAMES)
			bpf_probe_read_kernel_str(nk->name, NAME_LEN, f->f_path.dentry->d_name.name);
		where = &((struct file *)raw)->f_path;
	} else {
		if (dfd == AT_FDCWD) {
			where = &t->fs->pwd;
		} else {
			if (dfd < 0 || bpf_probe_read_kernel(&raw, sizeof(raw), &fds[dfd]) || !raw)
				return 0;
			where = &((struct file *)raw)->f_path;
		}
		how = dir_covers(filter, KERNEL(struct path, (void *)where)->dentry, 0, &nk->dir);
		if (how)
			bpf_probe_read_user_str(nk->name, NAME_LEN, upath);
	}
	if (!how || (how == D_NAMES && !bpf_map_lookup_elem(&watched_names, nk)) || !in_scope(c))
		return 0;
	struct open_resolved_rec *r = reserve(c, K_OPEN, sizeof(*r), 1);
	if (!r)
		return 0;
	fill_hdr(&r->h, K_OPEN, c);
	r->result = ret;
	r->flags = flags;
	r->rule = RULE_NONE;
	r->count = 1;
	r->path_len = 0;
	r->_pad = 0;
	struct fs_struct *fs = BPF_CORE_READ(t, fs);
	r->h.flags = F_RESOLVED | read_path(&r->resolved, 0, where, &fs->root);
	if (ret < 0) {  /* the directory, and the name as given */
		r->h.flags |= F_IN_DIR;
		bpf_probe_read_kernel(r->name, NAME_LEN, nk->name);
	}
	bpf_ringbuf_submit(r, wake_flags(c, K_OPEN, sizeof(*r), 1));
	return 0;
}

#define O_WRITES (01 | 02 | 0100 | 01000)  /* O_WRONLY O_RDWR O_CREAT O_TRUNC */

/* An absolute path the prefixes do not name may still lead to a watched
 * file (/etc//cron.d/x, /proc/self/cwd/x, a symlinked directory): a file
 * opened to be created or written is judged by its directories, as a
 * relative open is.  (Reads are not: that walk on every read cost more.) */
static __always_inline int open_written(struct sensor_config *c, long ret, __u32 flags, int dfd,
					const char *upath)
{
	return ret >= 0 && (flags & O_WRITES) ? open_relative(c, ret, flags, dfd, upath) : 0;
}

/* Only paths under a policy prefix go further than the 8-byte head check,
 * which keeps the cost for everything else to one read and a bit test. */
static __always_inline int open_done(long ret, int dfd, const char *upath, __u32 flags)
{
	struct sensor_config *c = get_config();
	if (!c)
		return 0;
	__u32 zero = 0;
	__u64 head;
	if (bpf_probe_read_user(&head, sizeof(head), upath) == 0) {
		if ((head & 0xff) != '/')
			return open_relative(c, ret, flags, dfd, upath);
		struct heads *heads = bpf_map_lookup_elem(&open_heads, &zero);
		if (c->open_heads && heads && !in_filter(heads->words, HEAD_WORDS, head, HEAD_BITS))
			return open_written(c, ret, flags, dfd, upath);
	}
	struct open_key *k = bpf_map_lookup_elem(&open_key_scratch, &zero);
	if (!k)
		return 0;
	long n = bpf_probe_read_user_str(k->data, PATH_LEN, upath);
	if (n <= 0)
		return 0;
	k->prefixlen = n * 8;
	__u32 *rule = bpf_map_lookup_elem(&open_prefixes, k);
	if (!rule)
		return open_written(c, ret, flags, dfd, upath);
	if (!in_scope(c) || fold_open(c, k, n, flags, ret, *rule))
		return 0;
	struct open_rec *r = bpf_map_lookup_elem(&open_scratch, &zero);
	if (!r)
		return 0;
	/* stamped on completion: after any fanotify verdict on the same call */
	fill_hdr(&r->h, K_OPEN, c);
	if (n == PATH_LEN)
		r->h.flags |= F_PATH_TRUNC;
	r->result = ret;
	r->flags = flags;
	r->rule = *rule;
	r->count = 1;
	r->path_len = n;
	bpf_probe_read_kernel(r->path, PATH_LEN, k->data);
	__u32 size = n;
	if (size > PATH_LEN)
		size = PATH_LEN;
	size += offsetof(struct open_rec, path);
	send(c, K_OPEN, r, size);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *regs = user_regs();
	return open_done(ctx->ret, PT_REGS_PARM1_SYSCALL(regs), (void *)PT_REGS_PARM2_SYSCALL(regs),
			 PT_REGS_PARM3_SYSCALL(regs));
}

SEC("tracepoint/syscalls/sys_exit_open")
int exit_open(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *regs = user_regs();
	return open_done(ctx->ret, AT_FDCWD, (void *)PT_REGS_PARM1_SYSCALL(regs),
			 PT_REGS_PARM2_SYSCALL(regs));
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int exit_openat2(struct trace_event_raw_sys_exit *ctx)
{
	struct pt_regs *regs = user_regs();
	__u64 flags = 0;  /* open_how.flags */
	bpf_probe_read_user(&flags, sizeof(flags), (void *)PT_REGS_PARM3_SYSCALL(regs));
	return open_done(ctx->ret, PT_REGS_PARM1_SYSCALL(regs), (void *)PT_REGS_PARM2_SYSCALL(regs), flags);
}

/* ---- set*id ------------------------------------------------------------ */

#define ID_UNCHANGED 0xffffffffu

/* Seen at sys_exit, like opens.  old: the effective id before the call (for
 * setfs*id, the old fs id, which is the call's return value); ID_UNCHANGED
 * when the thread's ids were never seen.  new: the effective id asked for,
 * else the first id given. */
static __always_inline int setid_done(__u32 call, long ret)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct sensor_config *c = get_config();
	if (!c || !in_scope(c)) {
		remember_ids(t);  /* the thread may come into scope later */
		return 0;
	}
	struct pt_regs *regs = user_regs();
	__u32 a = PT_REGS_PARM1_SYSCALL(regs), b = 0, d = 0;
	if (call == C_SETREUID || call == C_SETREGID || call == C_SETRESUID || call == C_SETRESGID)
		b = PT_REGS_PARM2_SYSCALL(regs);
	if (call == C_SETRESUID || call == C_SETRESGID)
		d = PT_REGS_PARM3_SYSCALL(regs);

	struct ids *seen = bpf_task_storage_get(&task_ids, t, 0, 0);
	struct setid_rec r = {};
	fill_hdr(&r.h, K_SETID, c);
	r.call = call;
	if (call == C_SETFSUID || call == C_SETFSGID)
		r.old = ret;
	else if (!seen)
		r.old = ID_UNCHANGED;
	else if (call <= C_SETFSUID)
		r.old = seen->euid;
	else
		r.old = seen->egid;
	if (call == C_SETREUID || call == C_SETREGID || call == C_SETRESUID || call == C_SETRESGID)
		r.new_id = b != ID_UNCHANGED ? b : a != ID_UNCHANGED ? a : d;
	else
		r.new_id = a;
	r.result = ret;
	remember_ids(t);
	send(c, K_SETID, &r, sizeof(r));
	return 0;
}

#define SETID(name, call)                                                     \
	SEC("tracepoint/syscalls/sys_exit_" #name)                            \
	int exit_##name(struct trace_event_raw_sys_exit *ctx)                 \
	{                                                                     \
		return setid_done(call, ctx->ret);                            \
	}

SETID(setuid, C_SETUID)
SETID(setreuid, C_SETREUID)
SETID(setresuid, C_SETRESUID)
SETID(setfsuid, C_SETFSUID)
SETID(setgid, C_SETGID)
SETID(setregid, C_SETREGID)
SETID(setresgid, C_SETRESGID)
SETID(setfsgid, C_SETFSGID)

/* Run once at start (kmod/_libbpf.py run_iterator): every thread alive
 * before the fork hook went on gets its ids remembered. */
SEC("iter/task")
int seed_ids(struct bpf_iter__task *ctx)
{
	struct task_struct *t = ctx->task;
	if (t)
		remember_ids(t);
	return 0;
}

/* ---- connect and bind -------------------------------------------------- */

/* Most specific first: exact protocol and port, then either as "any";
 * within one, the earliest rule (kmod/_policy.py sock_entries).  The tag
 * names the caller's workload, whose entries hold its own rules and those
 * for everyone, in the policy's order. */
static __always_inline struct rule_val *lookup4(__u32 tag, __u8 hook, __u8 proto, __u16 port, __u32 addr)
{
	struct sock4_key k = {.prefixlen = 8 * (SOCK_HEAD + 4)};
	__builtin_memcpy(&k.data[0], &tag, 4);
	k.data[4] = hook;
	__builtin_memcpy(&k.data[SOCK_HEAD], &addr, 4);
	for (int i = 0; i < 4; i++) {
		__u16 p = i & 1 ? 0 : port;
		k.data[5] = i & 2 ? 0 : proto;
		k.data[6] = p >> 8;
		k.data[7] = p & 0xff;
		struct rule_val *v = bpf_map_lookup_elem(&sock4_rules, &k);
		if (v)
			return v;
	}
	return NULL;
}

static __always_inline struct rule_val *lookup6(__u32 tag, __u8 hook, __u8 proto, __u16 port, __u32 *addr)
{
	struct sock6_key k = {.prefixlen = 8 * (SOCK_HEAD + 16)};
	__builtin_memcpy(&k.data[0], &tag, 4);
	k.data[4] = hook;
	__builtin_memcpy(&k.data[SOCK_HEAD], addr, 16);
	for (int i = 0; i < 4; i++) {
		__u16 p = i & 1 ? 0 : port;
		k.data[5] = i & 2 ? 0 : proto;
		k.data[6] = p >> 8;
		k.data[7] = p & 0xff;
		struct rule_val *v = bpf_map_lookup_elem(&sock6_rules, &k);
		if (v)
			return v;
	}
	return NULL;
}

static __always_inline __u32 tag_of(__u64 cgroup)
{
	__u32 *t = bpf_map_lookup_elem(&cgroup_tags, &cgroup);
	return t ? *t : 0;
}

/* Returns 1 to let the call go on, 0 to refuse it with EPERM.  quiet: send
 * no event for an allowed call. */
static __always_inline int on_sock(struct bpf_sock_addr *ctx, __u8 hook, int v6, int quiet)
{
	struct sensor_config *c = get_config();
	if (!c)
		return 1;
	if (excluded_pid(c, bpf_get_current_pid_tgid() >> 32))
		return 1;
	if (c->scope == S_NETNS && bpf_get_netns_cookie(ctx) != c->netns_cookie)
		return 1;

	__u32 addr[4] = {};
	__u16 port = bpf_ntohs(ctx->user_port);
	__u8 proto = ctx->protocol;
	__u32 tag = c->workloads ? tag_of(bpf_get_current_cgroup_id()) : 0;
	struct rule_val *v;
	if (v6) {
		addr[0] = ctx->user_ip6[0];
		addr[1] = ctx->user_ip6[1];
		addr[2] = ctx->user_ip6[2];
		addr[3] = ctx->user_ip6[3];
		if (addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0xffff))
			v = lookup4(tag, hook, proto, port, addr[3]);  /* IPv4-mapped */
		else
			v = lookup6(tag, hook, proto, port, addr);
	} else {
		addr[0] = ctx->user_ip4;
		v = lookup4(tag, hook, proto, port, addr[0]);
	}

	__u8 verdict = v ? v->action : V_ALLOW;
	if (quiet && verdict == V_ALLOW)
		return 1;
	__u32 kind = hook == H_CONNECT ? K_CONNECT : K_BIND;
	struct sock_rec *r = reserve(c, kind, sizeof(*r), 1);
	if (r) {
		fill_hdr(&r->h, kind, c);
		r->family = v6 ? AF_INET6 : AF_INET;
		r->port = port;
		r->protocol = proto;
		r->verdict = verdict;
		r->_pad = 0;
		r->_pad2 = 0;
		r->rule = v ? v->rule : RULE_NONE;
		__builtin_memcpy(r->addr, addr, 16);
		bpf_ringbuf_submit(r, wake_flags(c, kind, sizeof(*r), 1));
	}
	return verdict == V_BLOCK ? 0 : 1;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx) { return on_sock(ctx, H_CONNECT, 0, 0); }

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx) { return on_sock(ctx, H_CONNECT, 1, 0); }

/* A UDP datagram sent to an address without connect() meets the connect
 * rules too, or a blocked address (or an isolated host) would still be
 * reachable by sendto.  Reported only when a rule matches: a busy DNS or
 * QUIC client sends thousands a second. */
SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx) { return on_sock(ctx, H_CONNECT, 0, 1); }

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx) { return on_sock(ctx, H_CONNECT, 1, 1); }

SEC("cgroup/bind4")
int bind4(struct bpf_sock_addr *ctx) { return on_sock(ctx, H_BIND, 0, 0); }

SEC("cgroup/bind6")
int bind6(struct bpf_sock_addr *ctx) { return on_sock(ctx, H_BIND, 1, 0); }

/* ---- cutting what the policy now refuses ----------------------------------
 *
 * Run by the loader after each policy reload, in the scope's network
 * namespace: a connection to an address the connect rules now block (a
 * playbook's block_connect, an isolation) is destroyed, as a reset would,
 * instead of living on.  Each one cut is written to the iterator's output
 * (struct cut_rec), which the loader logs. */

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

#define TCP_TIME_WAIT 6
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

/* For a cgroup scope: was the socket made by a process in the scope's cgroup
 * or below it?  (Its cgroup's ancestor at the scope's depth is the scope.) */
static __always_inline int sock_in_cgroup(struct sensor_config *c, struct sock_common *skc)
{
	struct sock *sk = KERNEL(struct sock, skc);
	void *cg = NULL, *ancestor = NULL;
	__u32 level = c->cgroup_level;
	if (bpf_probe_read_kernel(&cg, sizeof(cg), &sk->sk_cgrp_data.cgroup) || !cg || level > 255)
		return 0;
	if (BPF_CORE_READ((struct cgroup *)cg, level) < (int)level)
		return 0;
	if (bpf_probe_read_kernel(&ancestor, sizeof(ancestor),
				  cg + bpf_core_field_offset(struct cgroup, ancestors) + level * sizeof(void *)) ||
	    !ancestor)
		return 0;
	return BPF_CORE_READ((struct cgroup *)ancestor, kn, id) == c->cgroup_id;
}

/* The workload tag of the cgroup that made the socket. */
static __always_inline __u32 sock_tag(struct sock_common *skc)
{
	struct sock *sk = KERNEL(struct sock, skc);
	void *cg = NULL;
	if (bpf_probe_read_kernel(&cg, sizeof(cg), &sk->sk_cgrp_data.cgroup) || !cg)
		return 0;
	return tag_of(BPF_CORE_READ((struct cgroup *)cg, kn, id));
}

static __always_inline int cut(struct bpf_iter_meta *meta, struct sock_common *sk, __u8 proto)
{
	struct sensor_config *c = get_config();
	if (!c || (c->scope == S_CGROUP && !sock_in_cgroup(c, sk)))
		return 0;
	struct cut_rec r = {.protocol = proto, .family = sk->skc_family};
	struct rule_val *v;
	__u32 tag = c->workloads ? sock_tag(sk) : 0;
	r.port = bpf_ntohs(sk->skc_dport);
	if (r.family == AF_INET) {
		r.addr[0] = sk->skc_daddr;
		v = lookup4(tag, H_CONNECT, proto, r.port, r.addr[0]);
	} else if (r.family == AF_INET6) {
		r.addr[0] = sk->skc_v6_daddr.in6_u.u6_addr32[0];
		r.addr[1] = sk->skc_v6_daddr.in6_u.u6_addr32[1];
		r.addr[2] = sk->skc_v6_daddr.in6_u.u6_addr32[2];
		r.addr[3] = sk->skc_v6_daddr.in6_u.u6_addr32[3];
		if (r.addr[0] == 0 && r.addr[1] == 0 && r.addr[2] == bpf_htonl(0xffff))
			v = lookup4(tag, H_CONNECT, proto, r.port, r.addr[3]);
		else
			v = lookup6(tag, H_CONNECT, proto, r.port, r.addr);
	} else {
		return 0;
	}
	if (!v || v->action != V_BLOCK)
		return 0;
	r.rule = v->rule;
	if (bpf_sock_destroy(sk) == 0)
		bpf_seq_write(meta->seq, &r, sizeof(r));
	return 0;
}

SEC("iter/tcp")
int cut_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *sk = ctx->sk_common;
	if (!sk)
		return 0;
	__u8 state = sk->skc_state;
	if (state == TCP_LISTEN || state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV)
		return 0;  /* not a connection, or not a full socket */
	return cut(ctx->meta, sk, 6);
}

SEC("iter/udp")
int cut_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp = ctx->udp_sk;
	if (!udp)
		return 0;
	struct sock_common *sk = (struct sock_common *)udp;
	if (!sk->skc_dport)
		return 0;  /* not connected: its datagrams meet the sendmsg hooks */
	return cut(ctx->meta, sk, 17);
}

/* ---- workloads: cgroups made and removed ---------------------------------- */

/* A cgroup made on the v2 hierarchy (hierarchy id 0): its tag before any
 * process can be moved into it, then news for userspace.  The tracepoint
 * fires under cgroup_mutex and a spinlock with interrupts off, so the
 * per-CPU scratch is this call's alone. */
SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(cgroup_made, struct cgroup *cgrp, const char *path)
{
	struct sensor_config *c = get_config();
	if (!c || !c->workloads || cgrp->root->hierarchy_id != 0)
		return 0;
	__u32 zero = 0;
	struct cg_path_key *k = bpf_map_lookup_elem(&cg_path_scratch, &zero);
	if (!k)
		return 0;
	__builtin_memset(k, 0, sizeof(*k));
	long n = bpf_probe_read_kernel_str(k->path, sizeof(k->path), path);
	__u64 id = cgrp->kn->id;
	__u32 *t = n > 0 && n < CG_PATH_LEN ? bpf_map_lookup_elem(&cg_paths, k) : NULL;
	__u32 tag = t ? *t : 0;
	if (!tag) {
		/* the parent cgroup, through its own css (css->cgroup) */
		struct cgroup_subsys_state *css = cgrp->self.parent;
		if (css)
			tag = tag_of(KERNEL(struct cgroup, css->cgroup)->kn->id);
	}
	if (tag)
		bpf_map_update_elem(&cgroup_tags, &id, &tag, BPF_ANY);
	struct cgroup_rec *r = bpf_ringbuf_reserve(&cgroups, sizeof(*r), 0);
	if (!r)
		return 0;  /* userspace's rescan finds it */
	r->id = id;
	r->ts = bpf_ktime_get_boot_ns();
	r->tag = tag;
	r->level = cgrp->level;
	__builtin_memcpy(r->path, k->path, sizeof(r->path));
	bpf_ringbuf_submit(r, BPF_RB_FORCE_WAKEUP);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(cgroup_removed, struct cgroup *cgrp, const char *path)
{
	struct sensor_config *c = get_config();
	if (!c || !c->workloads || cgrp->root->hierarchy_id != 0)
		return 0;
	__u64 id = cgrp->kn->id;
	bpf_map_delete_elem(&cgroup_tags, &id);  /* ids are never reused within a boot */
	return 0;
}

#include "files.bpf.h"  /* rename, unlink, link, symlink, chmod, chown, *xattr (K_FILE) */
