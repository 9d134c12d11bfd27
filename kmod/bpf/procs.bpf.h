/* Process and system hooks (issue 12): ptrace, signals sent to protected
 * processes, BPF program loads, mounts, and fileless execs.  Included by
 * sensor.bpf.c after its helpers; record layouts mirrored byte for byte in
 * kmod/_procs.py.
 *
 * "Protected" means the pids the sensor excludes (the agent and its
 * family, the `excluded` map).  Without an LSM the only refusal here is a
 * SIGKILL sent to the caller before it returns to user mode: it never runs
 * another instruction, and what it was doing (a tracer's attachment, a BPF
 * program's only fd, a fileless image) dies with it. */

extern struct task_struct *bpf_task_from_vpid(s32 vpid) __ksym;
extern void bpf_task_release(struct task_struct *p) __ksym;
extern int bpf_send_signal_task(struct task_struct *task, int sig, enum pid_type type, u64 value) __ksym;

#define SIGKILL 9
#define SIGCONT 18
#define F_FILELESS 128     /* header flag of an exec record: the image has no name */
#define BPF_TYPES 64       /* procs_policy.bpf: by program type; the last for any type above */
#define FSTYPE_LEN 32

/* Filled by kmod/_procs.py procs_config from the policy: a verdict
 * (enum verdict) per hook, V_ALLOW when no rule asks for it. */
struct procs_policy {
	__u8 ptrace_protected;  /* any request naming a protected process */
	__u8 ptrace_any;        /* attach or seize of any other process in scope */
	__u8 signal;            /* a signal a process sends to a protected one */
	__u8 mount;
	__u8 fileless;
	__u8 _pad[3];
	__u8 bpf[BPF_TYPES];    /* BPF_PROG_LOAD, by program type */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct procs_policy);
} procs_rules SEC(".maps");

struct ptrace_rec {
	struct hdr h;
	__s64 request;
	__u32 target_pid;     /* the target's process (host pid) */
	__s32 result;
	char target_comm[16];
	__u8 verdict;
	__u8 protected;       /* 1: the target is protected */
	__u8 _pad[6];
};

struct signal_rec {
	struct hdr h;
	__u32 signal;
	__u32 target_pid;
	__s32 result;         /* the kernel's TRACE_SIGNAL_*: 0 delivered, 1 ignored, ... */
	__u32 _pad;
	char target_comm[16];
};

struct bpf_rec {
	struct hdr h;
	__u32 command;
	__u32 prog_type;
	__s32 result;         /* the new program's fd, or -errno */
	__u8 verdict;
	__u8 _pad[3];
	char prog_name[16];   /* BPF_OBJ_NAME_LEN */
};

#define M_UMOUNT 6        /* after enum mount_call's */

struct mounted_rec {
	struct hdr h;
	__u32 call;           /* enum mount_call, or M_UMOUNT */
	__s32 result;
	__u64 flags;          /* mount's and umount2's flags; move_mount's; fsmount's attributes;
			       * mount_setattr's attributes set */
	char source[PATH_LEN];
	char target[PATH_LEN];
	char fstype[FSTYPE_LEN];
};

static __always_inline struct procs_policy *procs_policy(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&procs_rules, &zero);
}

/* ---- ptrace ----------------------------------------------------------------
 *
 * Decided twice with the same inputs: at sys_enter a BLOCK kills the tracer
 * (a pending SIGKILL does not stop the call itself: PTRACE_ATTACH still
 * attaches, and sends its target a SIGSTOP); at sys_exit the call is
 * reported with its result, and the target of a blocked attach that
 * succeeded is sent SIGCONT, which cancels that SIGSTOP whether it is
 * still pending or already taken (it clears the stop the target would
 * enter once the dying tracer detaches).  The target is named in the
 * tracer's own pid namespace. */

#define PTRACE_TRACEME 0
#define PTRACE_ATTACH 16
#define PTRACE_SEIZE 0x4206

static __always_inline int on_ptrace(int at_exit, long ret)
{
	struct sensor_config *c = get_config();
	struct procs_policy *p = procs_policy();
	if (!c || !p || (!p->ptrace_protected && !p->ptrace_any))
		return 0;
	struct pt_regs *regs = user_regs();
	long request = PT_REGS_PARM1_SYSCALL(regs);
	__u32 me = bpf_get_current_pid_tgid() >> 32;
	if (request == PTRACE_TRACEME || excluded_pid(c, me))
		return 0;
	struct task_struct *t = bpf_task_from_vpid(PT_REGS_PARM2_SYSCALL(regs));
	if (!t)
		return 0;
	__u32 target = t->tgid;
	__u8 v = V_ALLOW, protected = 0;
	if (target == me)
		v = V_ALLOW;
	else if ((protected = excluded_pid(c, target) ? 1 : 0))  /* self-protection: whatever the scope */
		v = p->ptrace_protected;
	else if ((request == PTRACE_ATTACH || request == PTRACE_SEIZE) && in_scope(c))
		v = p->ptrace_any;
	if (v == V_BLOCK && !at_exit)
		bpf_send_signal(SIGKILL);
	if (v == V_BLOCK && at_exit && request == PTRACE_ATTACH && ret == 0)
		bpf_send_signal_task(t, SIGCONT, PIDTYPE_TGID, 0);
	if (v != V_ALLOW && at_exit) {
		struct ptrace_rec *r = reserve(c, K_PTRACE, sizeof(*r), 1);
		if (r) {
			fill_hdr(&r->h, K_PTRACE, c);
			r->request = request;
			r->target_pid = target;
			r->result = ret;
			bpf_probe_read_kernel(r->target_comm, sizeof(r->target_comm), t->comm);
			r->verdict = v;
			r->protected = protected;
			__builtin_memset(r->_pad, 0, sizeof(r->_pad));
			bpf_ringbuf_submit(r, wake_flags(c, K_PTRACE, sizeof(*r), 1));
		}
	}
	bpf_task_release(t);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_ptrace")
int enter_ptrace(struct trace_event_raw_sys_enter *ctx)
{
	return on_ptrace(0, 0);
}

SEC("tracepoint/syscalls/sys_exit_ptrace")
int exit_ptrace(struct trace_event_raw_sys_exit *ctx)
{
	return on_ptrace(1, ctx->ret);
}

/* ---- signals to protected processes ----------------------------------------
 *
 * Every signal the kernel generates passes here; one map lookup turns away
 * those whose target is not protected.  Only signals a process asked for
 * (kill, tkill, sigqueue, pidfd_send_signal: si_code <= 0) are reported,
 * not the kernel's own (SIGCHLD, SIGPIPE, timers), nor the family's to
 * itself.  Audit only: the kernel offers no refusal point without an LSM. */

#define SEND_SIG_PRIV ((struct kernel_siginfo *)1)

SEC("tp_btf/signal_generate")
int BPF_PROG(on_signal, int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
	     int result)
{
	struct sensor_config *c = get_config();
	if (!c || !excluded_pid(c, task->tgid))
		return 0;
	struct procs_policy *p = procs_policy();
	if (!p || !p->signal)
		return 0;
	__u32 me = bpf_get_current_pid_tgid() >> 32;
	if (me == task->tgid || excluded_pid(c, me) || info == SEND_SIG_PRIV)
		return 0;
	if (info && KERNEL(struct kernel_siginfo, info)->si_code > 0)
		return 0;
	struct signal_rec *r = reserve(c, K_SIGNAL, sizeof(*r), 1);
	if (!r)
		return 0;
	fill_hdr(&r->h, K_SIGNAL, c);
	r->signal = sig;
	r->target_pid = task->tgid;
	r->result = result;
	r->_pad = 0;
	bpf_probe_read_kernel(r->target_comm, sizeof(r->target_comm), task->comm);
	bpf_ringbuf_submit(r, wake_flags(c, K_SIGNAL, sizeof(*r), 1));
	return 0;
}

/* ---- BPF program loads -------------------------------------------------------
 *
 * The attr is read in the loader's memory, at entry (a BLOCK kills the
 * loader: its program's only fd closes when it exits, so the program is
 * freed before anything can attach it) and again at exit, for the report
 * with the result.  The agent's own loads are excluded like all it does. */

#define BPF_PROG_LOAD 5

static __always_inline int on_bpf(int at_exit, long ret)
{
	struct sensor_config *c = get_config();
	struct procs_policy *p = procs_policy();
	struct pt_regs *regs = user_regs();
	if (!c || !p || PT_REGS_PARM1_SYSCALL(regs) != BPF_PROG_LOAD)
		return 0;
	union bpf_attr *attr = (void *)PT_REGS_PARM2_SYSCALL(regs);
	__u32 type = 0;
	bpf_probe_read_user(&type, sizeof(type), &attr->prog_type);
	__u8 v = p->bpf[type < BPF_TYPES - 1 ? type : BPF_TYPES - 1];
	if (v == V_ALLOW || !in_scope(c))
		return 0;
	if (!at_exit) {
		if (v == V_BLOCK)
			bpf_send_signal(SIGKILL);
		return 0;
	}
	struct bpf_rec *r = reserve(c, K_BPF, sizeof(*r), 1);
	if (!r)
		return 0;
	fill_hdr(&r->h, K_BPF, c);
	r->command = BPF_PROG_LOAD;
	r->prog_type = type;
	r->result = ret;
	r->verdict = v;
	__builtin_memset(r->_pad, 0, sizeof(r->_pad));
	if (bpf_probe_read_user(r->prog_name, sizeof(r->prog_name), attr->prog_name))
		r->prog_name[0] = 0;
	bpf_ringbuf_submit(r, wake_flags(c, K_BPF, sizeof(*r), 1));
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_bpf")
int enter_bpf(struct trace_event_raw_sys_enter *ctx)
{
	return on_bpf(0, 0);
}

SEC("tracepoint/syscalls/sys_exit_bpf")
int exit_bpf(struct trace_event_raw_sys_exit *ctx)
{
	return on_bpf(1, ctx->ret);
}

/* ---- mounts ----------------------------------------------------------------
 *
 * Reported at sys_exit from the exec guard's own mount hooks (MOUNT_NEWS)
 * and umount's, with the arguments read from the caller's memory.  Audit
 * only: userspace matches the mount point and type against the rules. */

static __always_inline void mounted(__u8 call, long ret)
{
	struct sensor_config *c = get_config();
	struct procs_policy *p = procs_policy();
	if (!c || !p || !p->mount || !in_scope(c))
		return;
	struct mounted_rec *r = reserve(c, K_MOUNTED, sizeof(*r), 1);
	if (!r)
		return;
	fill_hdr(&r->h, K_MOUNTED, c);
	r->call = call;
	r->result = ret;
	r->flags = 0;
	r->source[0] = r->target[0] = r->fstype[0] = 0;
	struct pt_regs *regs = user_regs();
	if (call == M_MOUNT) {  /* mount(source, target, fstype, flags, data) */
		bpf_probe_read_user_str(r->source, PATH_LEN, (void *)PT_REGS_PARM1_SYSCALL(regs));
		bpf_probe_read_user_str(r->target, PATH_LEN, (void *)PT_REGS_PARM2_SYSCALL(regs));
		bpf_probe_read_user_str(r->fstype, FSTYPE_LEN, (void *)PT_REGS_PARM3_SYSCALL(regs));
		r->flags = PT_REGS_PARM4_SYSCALL(regs);
	} else if (call == M_UMOUNT) {  /* umount2(target, flags) */
		bpf_probe_read_user_str(r->target, PATH_LEN, (void *)PT_REGS_PARM1_SYSCALL(regs));
		r->flags = PT_REGS_PARM2_SYSCALL(regs);
	} else if (call == M_MOVE_MOUNT) {  /* move_mount(from_dfd, from, to_dfd, to, flags) */
		bpf_probe_read_user_str(r->source, PATH_LEN, (void *)PT_REGS_PARM2_SYSCALL(regs));
		bpf_probe_read_user_str(r->target, PATH_LEN, (void *)PT_REGS_PARM4_SYSCALL(regs));
		r->flags = PT_REGS_PARM5_SYSCALL(regs);
	} else if (call == M_MOUNT_SETATTR) {  /* mount_setattr(dfd, path, flags, attr, size) */
		bpf_probe_read_user_str(r->target, PATH_LEN, (void *)PT_REGS_PARM2_SYSCALL(regs));
		bpf_probe_read_user(&r->flags, sizeof(r->flags), (void *)PT_REGS_PARM4_SYSCALL(regs));
	} else if (call == M_FSMOUNT) {  /* fsmount(fs_fd, flags, attrs): the fs_context's type and source */
		r->flags = PT_REGS_PARM3_SYSCALL(regs);
		struct task_struct *t = bpf_get_current_task_btf();
		struct file **fds = (void *)t->files->fdt->fd;
		__u32 fd = PT_REGS_PARM1_SYSCALL(regs);
		void *raw = NULL;
		if (fd < 1 << 20 && !bpf_probe_read_kernel(&raw, sizeof(raw), &fds[fd]) && raw) {
			struct fs_context *fc = KERNEL(struct fs_context, KERNEL(struct file, raw)->private_data);
			bpf_probe_read_kernel_str(r->fstype, FSTYPE_LEN, fc->fs_type->name);
			bpf_probe_read_kernel_str(r->source, PATH_LEN, fc->source);
		}
	}
	bpf_ringbuf_submit(r, wake_flags(c, K_MOUNTED, sizeof(*r), 1));
}

SEC("tracepoint/syscalls/sys_exit_umount")
int exit_umount(struct trace_event_raw_sys_exit *ctx)
{
	mounted(M_UMOUNT, ctx->ret);
	return 0;
}

/* ---- fileless exec -----------------------------------------------------------
 *
 * At sched_process_exec (sensor.bpf.c sched_exec): an image whose file has
 * no link left (a memfd, or a file deleted before or while it was
 * exec'd) is flagged F_FILELESS; under a BLOCK the task is killed there,
 * before the new image runs its first instruction.  fanotify cannot refuse
 * it: a memfd lives on the kernel's internal shmem mount, which no mark
 * reaches. */

static __always_inline __u8 exec_fileless(struct sensor_config *c)
{
	struct task_struct *t = KERNEL(struct task_struct, (void *)bpf_get_current_task());
	struct file *f = t->mm->exe_file;
	if (!f || f->f_inode->i_nlink != 0)
		return 0;
	struct procs_policy *p = procs_policy();
	if (p && p->fileless == V_BLOCK)
		bpf_send_signal(SIGKILL);
	return F_FILELESS;
}
