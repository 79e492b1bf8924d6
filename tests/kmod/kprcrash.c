// SPDX-License-Identifier: GPL-2.0
/*
 * kprcrash: a tiny out-of-tree module the symbolization test builds with -g against the
 * headers of the kernel the live test boots. Writing to /proc/kprcrash dereferences NULL
 * in a noinline function, two calls below the write handler, through an inlined helper.
 */
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/uaccess.h>

struct kpr_victim {
	int pad;
	int value;
};

static struct kpr_victim *kpr_nowhere;

static __always_inline int kpr_poke(struct kpr_victim *v, int n)
{
	return v->value + n; /* KPR_FAULT_LINE */
}

static noinline int kpr_crash_deep(int n)
{
	pr_info("kprcrash: poking %d\n", n);
	return kpr_poke(READ_ONCE(kpr_nowhere), n) * 3;
}

static noinline int kpr_crash_outer(int n)
{
	int r = kpr_crash_deep(n + 1); /* KPR_CALL_LINE */

	pr_info("kprcrash: got %d\n", r);
	return r;
}

static ssize_t kpr_write(struct file *file, const char __user *buf, size_t len, loff_t *pos)
{
	kpr_crash_outer((int)len);
	return len;
}

static const struct proc_ops kpr_ops = {
	.proc_write = kpr_write,
};

static int __init kpr_init(void)
{
	return proc_create("kprcrash", 0200, NULL, &kpr_ops) ? 0 : -ENOMEM;
}

static void __exit kpr_exit(void)
{
	remove_proc_entry("kprcrash", NULL);
}

module_init(kpr_init);
module_exit(kpr_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kpr-omprog test: crashes on write to /proc/kprcrash");
