/* A small persistent thread pool: run one task on all threads, with a spin barrier for use inside it.
 *
 * Workers spin briefly between tasks (decode calls come every few milliseconds) and then sleep on a
 * condition variable, so an idle model costs no CPU. */
#include "threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_BEFORE_SLEEP 200000
/* after this many pause-spins a waiting thread calls sched_yield() on each turn: on a machine with other busy
 * threads (the server's event loop, its clients) a spinning worker then lends its core instead of burning a
 * whole time slice; with nothing else runnable sched_yield returns at once */
#define SPIN_BEFORE_YIELD 2000

struct lm_pool {
    int n;
    pthread_t *threads;
    lm_task_fn fn;
    void *ctx;
    atomic_int generation; /* bumped once per task */
    atomic_int n_done;     /* workers finished with the current task */
    atomic_int n_sleeping;
    atomic_int stop;
    atomic_int barrier_count;
    atomic_int barrier_phase;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
};

typedef struct {
    lm_pool *pool;
    int ith;
} worker_arg;

static void *worker_main(void *p) {
    worker_arg *arg = p;
    lm_pool *pool = arg->pool;
    const int ith = arg->ith;
    free(arg);
    int seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop) && spins < SPIN_BEFORE_SLEEP) {
            if (++spins > SPIN_BEFORE_YIELD) sched_yield();
            else CPU_RELAX();
        }
        if (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop)) {
            pthread_mutex_lock(&pool->mutex);
            atomic_fetch_add(&pool->n_sleeping, 1);
            while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop)) {
                pthread_cond_wait(&pool->wake, &pool->mutex);
            }
            atomic_fetch_sub(&pool->n_sleeping, 1);
            pthread_mutex_unlock(&pool->mutex);
        }
        if (atomic_load(&pool->stop)) break;
        seen = atomic_load(&pool->generation);
        pool->fn(pool->ctx, ith, pool->n);
        atomic_fetch_add(&pool->n_done, 1);
    }
    return NULL;
}

lm_pool *lm_pool_create(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    lm_pool *pool = calloc(1, sizeof(*pool));
    if (!pool) return NULL;
    pool->n = n_threads;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    for (int i = 1; i < n_threads; i++) {
        worker_arg *arg = malloc(sizeof(*arg));
        arg->pool = pool;
        arg->ith = i;
        if (pthread_create(&pool->threads[i], NULL, worker_main, arg) != 0) {
            free(arg);
            pool->n = i; /* run with the threads we got */
            break;
        }
    }
    return pool;
}

void lm_pool_free(lm_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->mutex);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 1; i < pool->n; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->mutex);
    pthread_cond_destroy(&pool->wake);
    free(pool->threads);
    free(pool);
}

int lm_pool_size(const lm_pool *pool) { return pool ? pool->n : 1; }

void lm_pool_run(lm_pool *pool, lm_task_fn fn, void *ctx) {
    if (!pool || pool->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    atomic_store(&pool->n_done, 0);
    atomic_fetch_add(&pool->generation, 1);
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mutex);
    }
    fn(ctx, 0, pool->n);
    while (atomic_load(&pool->n_done) < pool->n - 1) CPU_RELAX();
}

void lm_barrier(lm_pool *pool) {
    if (!pool || pool->n == 1) return;
    const int phase = atomic_load(&pool->barrier_phase);
    if (atomic_fetch_add(&pool->barrier_count, 1) == pool->n - 1) {
        atomic_store(&pool->barrier_count, 0);
        atomic_fetch_add(&pool->barrier_phase, 1);
    } else {
        int spins = 0;
        while (atomic_load(&pool->barrier_phase) == phase) {
            if (++spins > SPIN_BEFORE_YIELD) sched_yield();
            else CPU_RELAX();
        }
    }
}
