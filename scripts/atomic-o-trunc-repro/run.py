import os, sys, threading, time, subprocess, ctypes
root=sys.argv[1]; atomic=sys.argv[2]
os.makedirs(f"{root}/m", exist_ok=True)
open(f"{root}/backing","w").write("lower a\n")
log=open(f"{root}/fs.log","w")
d=subprocess.Popen([os.path.join(os.path.dirname(os.path.abspath(__file__)), "target/debug/fuse-otrunc-repro"), f"{root}/backing", f"{root}/m"], env=dict(os.environ, ATOMIC=atomic), stderr=log)
for _ in range(100):
    if os.path.ismount(f"{root}/m"): break
    time.sleep(0.05)
f=f"{root}/m/f"
os.stat(f)
def app():
    fd=os.open(f, os.O_WRONLY|os.O_APPEND); os.write(fd,b"appended\n"); os.close(fd)
t=threading.Thread(target=app); t.start()
time.sleep(0.2)
fd=os.open(f, os.O_WRONLY|os.O_TRUNC)
t.join()
libc=ctypes.CDLL(None, use_errno=True)
libc.mmap.restype=ctypes.c_void_p
libc.mmap.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int,ctypes.c_int,ctypes.c_int,ctypes.c_long]
rfd=os.open(f, os.O_RDONLY)
addr=libc.mmap(None,4096,1,1,rfd,0)
w=os.memfd_create("s")
n=libc.pwrite(w, ctypes.c_void_p(addr), 4096, ctypes.c_long(0))
r="ok" if n>=0 else os.strerror(ctypes.get_errno())
libc.munmap(ctypes.c_void_p(addr), 4096)
print(f"ATOMIC={atomic}: copy from a mapping of page 0: {r}; then stat size {os.stat(f).st_size}, content {open(f,'rb').read()!r}")
os.close(rfd); os.close(fd)
subprocess.run(["umount", f"{root}/m"]); d.wait()
print(open(f"{root}/fs.log").read())
