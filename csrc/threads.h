/* Thread pool: lm_pool_run runs fn(ctx, ith, nth) on every thread (the caller is thread 0) and returns
 * when all are done; lm_barrier synchronises the threads of the running task. */
#ifndef LLAMETTE_THREADS_H
#define LLAMETTE_THREADS_H

typedef struct lm_pool lm_pool;
typedef void (*lm_task_fn)(void *ctx, int ith, int nth);

lm_pool *lm_pool_create(int n_threads);
void lm_pool_free(lm_pool *pool);
int lm_pool_size(const lm_pool *pool);
void lm_pool_run(lm_pool *pool, lm_task_fn fn, void *ctx);
void lm_barrier(lm_pool *pool);

/* the rows [*r0, *r1) of n that thread ith of nth handles */
static inline void lm_split(long n, int ith, int nth, long *r0, long *r1) {
    const long per = (n + nth - 1) / nth;
    *r0 = per * ith < n ? per * ith : n;
    *r1 = *r0 + per < n ? *r0 + per : n;
}

#endif
