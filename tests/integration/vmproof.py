"""A guest that proves the chain: QEMU's rbd driver + the storage's client + the libvirt secret.

The image gets a 512-byte boot sector (written through librbd) whose code prints a marker on the
first serial port and halts: if the domain's serial log shows the marker, QEMU opened the RBD
image as the storage's cephx user with the key libvirt holds, and read it.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

MARKER = b"RBD-CHAIN-OK"


def boot_sector(marker: bytes = MARKER) -> bytes:
    """x86 real mode: cld; ds=0; print marker on COM1 (0x3f8); hlt loop."""
    code = bytes([
        0xFC,                    # cld
        0x31, 0xC0,              # xor ax, ax
        0x8E, 0xD8,              # mov ds, ax
        0xBA, 0xF8, 0x03,        # mov dx, 0x3f8
        0xBE, 0x00, 0x00,        # mov si, msg (patched below)
        0xAC,                    # next: lodsb
        0x84, 0xC0,              # test al, al
        0x74, 0x03,              # jz done
        0xEE,                    # out dx, al
        0xEB, 0xF8,              # jmp next
        0xF4,                    # done: hlt
        0xEB, 0xFD,              # jmp done
    ])
    msg_at = 0x7C00 + len(code)
    code = code[:9] + msg_at.to_bytes(2, "little") + code[11:]
    body = code + marker + b"\r\n\0"
    assert len(body) <= 510
    return body + bytes(510 - len(body)) + b"\x55\xAA"


def domain_xml(name: str, pool: str, image: str, monitors: list[tuple[str, int]], client: str, secret_uuid: str,
               serial_log: str) -> str:
    hosts = "".join(f"<host name='{escape(h)}' port='{p}'/>" for h, p in monitors)
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='rbd' name='{escape(pool)}/{escape(image)}'>{hosts}</source>
      <auth username='{escape(client)}'><secret type='ceph' uuid='{escape(secret_uuid)}'/></auth>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{escape(serial_log)}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""
