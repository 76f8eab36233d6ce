import asyncio, signal
from geppetto_temporal import connect, create_worker
def h(*a): print("handler called", flush=True)
async def main():
    signal.signal(signal.SIGTERM, h)
    print("before connect", signal.getsignal(signal.SIGTERM), flush=True)
    c = await connect("127.0.0.1:24587", from_env=False)
    print("after connect", signal.getsignal(signal.SIGTERM), flush=True)
    w = create_worker(c, task_queue="x")
    t = asyncio.create_task(w.run())
    await asyncio.sleep(2)
    print("after run", signal.getsignal(signal.SIGTERM), flush=True)
    import os; os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(1)
    print("survived", flush=True)
    t.cancel()
    try: await t
    except BaseException as e: print("run ended", type(e).__name__)
asyncio.run(main())
