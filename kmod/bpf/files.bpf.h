/* File changes an open does not show: rename, unlink/rmdir, link, symlink,
 * mknod, chmod, chown and the *xattr calls (K_FILE).  Included at the end of
 * sensor.bpf.c; decoded by kmod/_files.py, which mirrors struct file_rec.
 *
 * No refusal point exists for these calls on our kernels (no BPF LSM, and
 * fanotify's permission events cover only open and exec), so they are only
 * reported, at sys_exit (the arguments from the caller's saved registers, as
 * for opens).  A call is reported when
 *   - a `file` rule may name one of its paths: an absolute path by its
 *     literal prefix (file_prefixes), any path by its last component
 *     (file_names, for globs like "/home/ * /.bash_history"), a relative one by
 *     the directories above where it starts (file_dirs), an fd by the
 *     directories above its file; each with the ops the rules ask for;
 *   - or always: a chmod that sets S_ISUID or S_ISGID, a setxattr of
 *     security.capability (file capabilities).
 * Everything else costs a string read and one or two lookups; userspace
 * matches the globs exactly. */

enum file_op {
	FO_RENAME = 1, FO_UNLINK, FO_RMDIR, FO_LINK, FO_SYMLINK, FO_MKNOD,
	FO_CHMOD, FO_CHOWN, FO_SETXATTR, FO_REMOVEXATTR,
};

/* why a record was sent (file_rec.why) */
#define W_RULE 1
#define W_SETID 2
#define W_CAP 4

/* how a file_path holds its path */
#define FP_NONE 0
#define FP_TEXT 1   /* text: as given (absolute, or a symlink's target) */
#define FP_DIR 2    /* dir: where a relative text starts (cwd or dirfd) */
#define FP_FILE 3   /* dir: the file itself (an fd, or AT_EMPTY_PATH) */

struct file_path {
	__u8 how;
	__u8 flags;           /* F_PATH_TRUNC */
	__u16 _pad[3];
	struct pathbuf dir;
	char text[PATH_LEN];
};

struct file_rec {
	struct hdr h;
	__s32 result;
	__u8 op;
	__u8 why;
	__u16 _pad;
	__u32 mode;           /* chmod, mknod */
	__u32 owner;          /* chown; (uid_t)-1: unchanged */
	__u32 group;
	__u32 _pad2;
	char xattr[NAME_LEN];
	struct file_path path;    /* what the call creates, removes or changes */
	struct file_path source;  /* rename's old name, link's file, symlink's target */
};

/* watched directories of the file rules: ops for files directly in it, and
 * for files at any depth below it ("**") */
struct dir_ops {
	__u32 direct;
	__u32 below;
};

struct file_conf {
	__u32 prefixes;       /* entries in file_prefixes */
	__u32 names;          /* entries in file_names */
	__u32 dirs;           /* entries in file_dirs */
	__u32 heads;          /* 1: file_heads holds every prefix's first 8 bytes */
};

struct file_name {
	char name[NAME_LEN];  /* NUL-padded */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct open_key);
	__type(value, __u32);  /* ops (1 << enum file_op) of every rule whose prefix this one extends */
} file_prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct file_name);
	__type(value, __u32);
} file_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct dir_key);
	__type(value, struct dir_ops);
} file_dirs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dir_filter);
} file_dir_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct file_conf);
} file_settings SEC(".maps");

/* As open_heads: most absolute paths are turned away by a bit test on
 * their first 8 bytes, before the trie. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct heads);
} file_heads SEC(".maps");

struct file_scratch {
	struct open_key key;
	struct file_name name;
	struct dir_key dir;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct file_scratch);
} file_scratch SEC(".maps");

#define AT_EMPTY_PATH 0x1000
#define AT_REMOVEDIR 0x200
#define S_ISUID 04000
#define S_ISGID 02000

/* The struct file behind the caller's fd, or NULL. */
static __always_inline struct file *fd_file(int fd)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct fdtable *fdt = t->files->fdt;
	void *raw = NULL;
	if (fd < 0 || fd >= fdt->max_fds)
		return NULL;
	struct file **fds = (void *)fdt->fd;
	if (bpf_probe_read_kernel(&raw, sizeof(raw), &fds[fd]))
		return NULL;
	return raw;
}

/* Where a relative path given with this dirfd starts: the cwd or the fd's file. */
static __always_inline const struct path *start_dir(int dfd)
{
	if (dfd == AT_FDCWD)
		return &bpf_get_current_task_btf()->fs->pwd;
	struct file *f = fd_file(dfd);
	return f ? &f->f_path : NULL;
}

/* The ops the file rules ask for on files below DIR (inclusive: DIR's own
 * children at depth 0), walking up at most DIR_DEPTH directories. */
static __always_inline __u32 dirs_ops(struct file_scratch *s, struct dentry *d)
{
	__u32 zero = 0;
	struct dir_filter *filter = bpf_map_lookup_elem(&file_dir_filter, &zero);
	if (!filter)
		return 0;
	__u32 ops = 0;
	for (int i = 0; i < DIR_DEPTH; i++) {
		struct dentry *dir = KERNEL(struct dentry, d);
		s->dir.ino = dir->d_inode->i_ino;
		if (in_filter(filter->words, DIR_WORDS, s->dir.ino, DIR_BITS)) {
			s->dir.dev = dir->d_sb->s_dev;
			s->dir._pad = 0;
			struct dir_ops *v = bpf_map_lookup_elem(&file_dirs, &s->dir);
			if (v)
				ops |= i == 0 ? v->direct | v->below : v->below;
		}
		struct dentry *up = dir->d_parent;
		if (!up || up == d)
			break;
		d = up;
	}
	return ops;
}

/* The ops the file rules ask for on a file of this last component. */
static __always_inline __u32 name_ops(struct file_scratch *s, const char *kernel_name)
{
	__builtin_memset(s->name.name, 0, NAME_LEN);
	if (bpf_probe_read_kernel_str(s->name.name, NAME_LEN, kernel_name) <= 1)
		return 0;
	__u32 *ops = bpf_map_lookup_elem(&file_names, &s->name);
	return ops ? *ops : 0;
}

/* An fd's file: by its name, then by the directories above it. */
static __always_inline __u32 fd_ops(struct file_conf *fc, struct file_scratch *s, int fd)
{
	struct file *raw = fd_file(fd);
	if (!raw)
		return 0;
	struct dentry *d = KERNEL(struct file, raw)->f_path.dentry;
	__u32 ops = fc->names ? name_ops(s, (const char *)KERNEL(struct dentry, d)->d_name.name) : 0;
	struct dentry *up = KERNEL(struct dentry, d)->d_parent;
	if (fc->dirs && up && up != d)
		ops |= dirs_ops(s, up);
	return ops;
}

/* Where the last component of the path in s->key starts: 8 bytes a step
 * (a '/' byte is a zero byte of v ^ 0x2f..2f), bytes from the NUL on left
 * out (the scratch holds older paths there).  bpf_loop: the verifier walks
 * the body once. */
struct last_slash {
	struct file_scratch *s;
	__u32 len;            /* bytes before the NUL */
	__u32 after;
};

#define BYTES(b) (0x0101010101010101ULL * (b))

static long slash_step(__u32 w, struct last_slash *ls)
{
	__u32 at = w * 8;
	if (at >= ls->len || at > PATH_LEN - 8)
		return 1;
	__u64 v;
	__builtin_memcpy(&v, &ls->s->key.data[at & (PATH_LEN - 8)], 8);
	__u64 x = v ^ BYTES('/');
	__u64 zero = ~(((x & BYTES(0x7f)) + BYTES(0x7f)) | x | BYTES(0x7f));  /* 0x80 where '/' */
	__u32 left = ls->len - at;
	if (left < 8)
		zero &= (1ULL << (left * 8)) - 1;
	if (!zero)
		return 0;
	__u32 b = 0;  /* the highest byte with its bit set */
	if (zero >> 32) {
		b += 4;
		zero >>= 32;
	}
	if (zero >> 16) {
		b += 2;
		zero >>= 16;
	}
	if (zero >> 8)
		b += 1;
	ls->after = at + b + 1;
	return 0;
}

/* The ops the file rules ask for on the path a caller gave (dirfd, text;
 * NULL for a call on an fd).  text_only: a symlink's target, which is no path from dfd. */
static __always_inline __u32 path_ops(int dfd, const char *upath, int text_only)
{
	__u32 zero = 0;
	struct file_scratch *s = bpf_map_lookup_elem(&file_scratch, &zero);
	struct file_conf *fc = bpf_map_lookup_elem(&file_settings, &zero);
	if (!s || !fc || !(fc->prefixes | fc->names | fc->dirs))
		return 0;
	if (!upath)  /* an fd-based call */
		return text_only ? 0 : fd_ops(fc, s, dfd);
	long n = bpf_probe_read_user_str(s->key.data, PATH_LEN, upath);
	if (n <= 0)
		return 0;
	if (n == 1)  /* "" with AT_EMPTY_PATH: the dirfd's own file */
		return text_only ? 0 : fd_ops(fc, s, dfd);
	__u32 ops = 0;
	if (fc->names) {
		struct last_slash ls = {.s = s, .len = n - 1};
		bpf_loop(PATH_LEN / 8, slash_step, &ls, 0);
		ops = name_ops(s, &s->key.data[ls.after & (PATH_LEN - 1)]);
	}
	if (s->key.data[0] == '/') {
		struct heads *heads = bpf_map_lookup_elem(&file_heads, &zero);
		__u64 head;
		__builtin_memcpy(&head, s->key.data, 8);
		if (n <= 8)
			head &= (1ULL << ((n - 1) * 8)) - 1;  /* as the key: NUL-padded */
		if (fc->heads && heads && !in_filter(heads->words, HEAD_WORDS, head, HEAD_BITS))
			return ops;
		s->key.prefixlen = n * 8;
		__u32 *v = bpf_map_lookup_elem(&file_prefixes, &s->key);
		return ops | (v ? *v : 0);
	}
	if (text_only)
		return ops;
	if (s->key.data[0] == '.' && s->key.data[1] == '.')
		return ~0u;  /* climbs out of where it starts: userspace judges the whole path */
	const struct path *where = start_dir(dfd);
	if (fc->dirs && where)
		ops |= dirs_ops(s, KERNEL(struct path, (void *)where)->dentry);
	return ops;
}

/* The path as the record carries it: absolute text as given; a relative
 * one with the directory it starts from; an fd's (or AT_EMPTY_PATH's) file
 * by its own path. */
static __always_inline void fill_path(struct file_path *out, __u32 slot, int dfd, const char *upath,
				      int text_only)
{
	struct fs_struct *fs = bpf_get_current_task_btf()->fs;
	long n = upath ? bpf_probe_read_user_str(out->text, PATH_LEN, upath) : 0;
	out->how = FP_TEXT;
	out->flags = n == PATH_LEN ? F_PATH_TRUNC : 0;
	out->dir.depth = 0;
	if (text_only || (n > 1 && out->text[0] == '/'))
		return;
	if (n > 1) {
		const struct path *where = start_dir(dfd);
		if (!where)
			return;  /* no such dirfd: the text alone */
		out->how = FP_DIR;
		out->flags |= read_path(&out->dir, slot, where, &fs->root);
		return;
	}
	out->text[0] = 0;
	struct file *f = fd_file(dfd);
	if (!f) {
		out->how = FP_NONE;
		return;
	}
	out->how = FP_FILE;
	out->flags |= read_path(&out->dir, slot, &f->f_path, &fs->root);
}

/* A call's arguments, as the programs below collect them. */
struct file_call {
	__u8 op;
	__u8 why;
	int dfd;
	const char *path;
	int src_dfd;
	const char *source;   /* NULL: none */
	int source_text;      /* the source is text, no path (a symlink's target) */
	__u32 mode;
	__u32 owner;
	__u32 group;
	const char *xattr;    /* user memory, or NULL */
};

static __always_inline int file_done(long ret, struct file_call *a)
{
	struct sensor_config *c = get_config();
	if (!c)
		return 0;
	__u32 bit = 1u << a->op;
	if ((path_ops(a->dfd, a->path, 0) & bit) ||
	    (a->source && (path_ops(a->src_dfd, a->source, a->source_text) & bit)))
		a->why |= W_RULE;
	if (!a->why || !in_scope(c))
		return 0;
	struct file_rec *r = reserve(c, K_FILE, sizeof(*r), 1);
	if (!r)
		return 0;
	fill_hdr(&r->h, K_FILE, c);
	r->result = ret;
	r->op = a->op;
	r->why = a->why;
	r->_pad = 0;
	r->mode = a->mode;
	r->owner = a->owner;
	r->group = a->group;
	r->_pad2 = 0;
	r->xattr[0] = 0;
	if (a->xattr)
		bpf_probe_read_user_str(r->xattr, NAME_LEN, a->xattr);
	fill_path(&r->path, 0, a->dfd, a->path, 0);
	if (a->source)
		fill_path(&r->source, 1, a->src_dfd, a->source, a->source_text);
	else
		r->source.how = FP_NONE;
	r->h.flags |= (r->path.flags | r->source.flags) & F_PATH_TRUNC;
	bpf_ringbuf_submit(r, wake_flags(c, K_FILE, sizeof(*r), 1));
	return 0;
}

#define ARG(n) PT_REGS_PARM##n##_SYSCALL(regs)
#define FILE_PROG(name, ...)                                                  \
	SEC("tracepoint/syscalls/sys_exit_" #name)                            \
	int exit_##name(struct trace_event_raw_sys_exit *ctx)                 \
	{                                                                     \
		struct pt_regs *regs = user_regs();                           \
		struct file_call a = {__VA_ARGS__};                           \
		return file_done(ctx->ret, &a);                               \
	}

FILE_PROG(rename, .op = FO_RENAME, .dfd = AT_FDCWD, .path = (void *)ARG(2),
	  .src_dfd = AT_FDCWD, .source = (void *)ARG(1))
FILE_PROG(renameat, .op = FO_RENAME, .dfd = ARG(3), .path = (void *)ARG(4),
	  .src_dfd = ARG(1), .source = (void *)ARG(2))
FILE_PROG(renameat2, .op = FO_RENAME, .dfd = ARG(3), .path = (void *)ARG(4),
	  .src_dfd = ARG(1), .source = (void *)ARG(2))
FILE_PROG(unlink, .op = FO_UNLINK, .dfd = AT_FDCWD, .path = (void *)ARG(1))
FILE_PROG(rmdir, .op = FO_RMDIR, .dfd = AT_FDCWD, .path = (void *)ARG(1))
FILE_PROG(unlinkat, .op = ARG(3) & AT_REMOVEDIR ? FO_RMDIR : FO_UNLINK, .dfd = ARG(1),
	  .path = (void *)ARG(2))
FILE_PROG(link, .op = FO_LINK, .dfd = AT_FDCWD, .path = (void *)ARG(2),
	  .src_dfd = AT_FDCWD, .source = (void *)ARG(1))
FILE_PROG(linkat, .op = FO_LINK, .dfd = ARG(3), .path = (void *)ARG(4),
	  .src_dfd = ARG(1), .source = (void *)ARG(2))
FILE_PROG(symlink, .op = FO_SYMLINK, .dfd = AT_FDCWD, .path = (void *)ARG(2),
	  .source = (void *)ARG(1), .source_text = 1)
FILE_PROG(symlinkat, .op = FO_SYMLINK, .dfd = ARG(2), .path = (void *)ARG(3),
	  .source = (void *)ARG(1), .source_text = 1)
FILE_PROG(mknod, .op = FO_MKNOD, .dfd = AT_FDCWD, .path = (void *)ARG(1), .mode = ARG(2))
FILE_PROG(mknodat, .op = FO_MKNOD, .dfd = ARG(1), .path = (void *)ARG(2), .mode = ARG(3))

#define SETID_MODE(m) ((m) & (S_ISUID | S_ISGID) ? W_SETID : 0)
FILE_PROG(chmod, .op = FO_CHMOD, .dfd = AT_FDCWD, .path = (void *)ARG(1), .mode = ARG(2),
	  .why = SETID_MODE(ARG(2)))
FILE_PROG(fchmod, .op = FO_CHMOD, .dfd = ARG(1), .path = NULL, .mode = ARG(2),
	  .why = SETID_MODE(ARG(2)))
FILE_PROG(fchmodat, .op = FO_CHMOD, .dfd = ARG(1), .path = (void *)ARG(2), .mode = ARG(3),
	  .why = SETID_MODE(ARG(3)))
FILE_PROG(fchmodat2, .op = FO_CHMOD, .dfd = ARG(1), .path = (void *)ARG(2), .mode = ARG(3),
	  .why = SETID_MODE(ARG(3)))
FILE_PROG(chown, .op = FO_CHOWN, .dfd = AT_FDCWD, .path = (void *)ARG(1), .owner = ARG(2),
	  .group = ARG(3))
FILE_PROG(lchown, .op = FO_CHOWN, .dfd = AT_FDCWD, .path = (void *)ARG(1), .owner = ARG(2),
	  .group = ARG(3))
FILE_PROG(fchown, .op = FO_CHOWN, .dfd = ARG(1), .path = NULL, .owner = ARG(2), .group = ARG(3))
FILE_PROG(fchownat, .op = FO_CHOWN, .dfd = ARG(1), .path = (void *)ARG(2), .owner = ARG(3),
	  .group = ARG(4))

/* security.capability, the file capabilities an exec grants */
static __always_inline __u8 capability_xattr(const char *uname)
{
	static const char want[] = "security.capability";
	char got[sizeof(want)];
	if (bpf_probe_read_user_str(got, sizeof(got), uname) != sizeof(want))
		return 0;
	for (int i = 0; i < sizeof(want); i++)
		if (got[i] != want[i])
			return 0;
	return W_CAP;
}

#define SETXATTR(name, dfd_, path_, xattr_)                                   \
	FILE_PROG(name, .op = FO_SETXATTR, .dfd = dfd_, .path = path_,        \
		  .xattr = (void *)(xattr_), .why = capability_xattr((void *)(xattr_)))
SETXATTR(setxattr, AT_FDCWD, (void *)ARG(1), ARG(2))
SETXATTR(lsetxattr, AT_FDCWD, (void *)ARG(1), ARG(2))
SETXATTR(fsetxattr, ARG(1), NULL, ARG(2))
SETXATTR(setxattrat, ARG(1), (void *)ARG(2), ARG(4))
FILE_PROG(removexattr, .op = FO_REMOVEXATTR, .dfd = AT_FDCWD, .path = (void *)ARG(1),
	  .xattr = (void *)ARG(2))
FILE_PROG(lremovexattr, .op = FO_REMOVEXATTR, .dfd = AT_FDCWD, .path = (void *)ARG(1),
	  .xattr = (void *)ARG(2))
FILE_PROG(fremovexattr, .op = FO_REMOVEXATTR, .dfd = ARG(1), .path = NULL, .xattr = (void *)ARG(2))
FILE_PROG(removexattrat, .op = FO_REMOVEXATTR, .dfd = ARG(1), .path = (void *)ARG(2),
	  .xattr = (void *)ARG(4))
