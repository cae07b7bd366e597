/* The SPDK headers ordo's binding is generated from (build.rs allowlists what it uses). */
#include <spdk/stdinc.h>
#include <spdk/env.h>
#include <spdk/thread.h>
#include <spdk/bdev.h>
#include <spdk/init.h>
#include <spdk/rpc.h>
#include <spdk/log.h>
#include <spdk/event.h>
#include <spdk/cpuset.h>

/* The one function of spdk/bdev_module.h ordo uses (tests remove a bdev as a hot remove
 * would), declared as that header does: including the header would bring every bdev
 * module type into the binding. */
typedef void (*spdk_bdev_unregister_cb)(void *cb_arg, int rc);
void spdk_bdev_unregister(struct spdk_bdev *bdev, spdk_bdev_unregister_cb cb_fn, void *cb_arg);
