package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"
)

// IPAM hands out the IPv4 addresses of the pod CIDR: not the network or
// broadcast address, not the gateway (the bridge, first host) nor other
// reserved addresses. It continues after the last address it gave out
// (wrapping around), so a just-released address is not reused at once
// while conntrack entries or peers may still remember it.
type IPAM struct {
	mu       sync.Mutex
	base     uint32
	size     uint32 // addresses in the CIDR
	prefix   int
	reserved map[uint32]bool
	used     map[uint32]string
	last     uint32 // offset of the last allocation
}

// NewIPAM builds an allocator for cidr (IPv4, prefix <= 30) with reserved
// addresses excluded; addresses outside the CIDR are ignored.
func NewIPAM(cidr *net.IPNet, reserved ...net.IP) (*IPAM, error) {
	ip4 := cidr.IP.To4()
	ones, bits := cidr.Mask.Size()
	if ip4 == nil || bits != 32 {
		return nil, fmt.Errorf("pod CIDR %s: only IPv4 is supported", cidr)
	}
	if ones > 30 {
		return nil, fmt.Errorf("pod CIDR %s: too small (need at least a /30)", cidr)
	}
	a := &IPAM{
		base:     binary.BigEndian.Uint32(ip4.Mask(cidr.Mask)),
		size:     1 << uint(32-ones),
		prefix:   ones,
		reserved: map[uint32]bool{},
		used:     map[uint32]string{},
	}
	a.reserved[0] = true        // network
	a.reserved[a.size-1] = true // broadcast
	a.reserved[1] = true        // gateway: the bridge
	for _, r := range reserved {
		if off, ok := a.offset(r); ok {
			a.reserved[off] = true
		}
	}
	a.last = 1
	return a, nil
}

func (a *IPAM) offset(ip net.IP) (uint32, bool) {
	ip4 := ip.To4()
	if ip4 == nil {
		return 0, false
	}
	v := binary.BigEndian.Uint32(ip4)
	if v < a.base || v >= a.base+a.size {
		return 0, false
	}
	return v - a.base, true
}

func (a *IPAM) ip(off uint32) net.IP {
	b := make(net.IP, 4)
	binary.BigEndian.PutUint32(b, a.base+off)
	return b
}

// Gateway is the first host address (the bridge's).
func (a *IPAM) Gateway() net.IP { return a.ip(1) }

// PrefixLen is the CIDR's prefix length.
func (a *IPAM) PrefixLen() int { return a.prefix }

// Allocate gives owner the next free address.
func (a *IPAM) Allocate(owner string) (net.IP, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := uint32(1); i <= a.size; i++ {
		off := (a.last + i) % a.size
		if a.reserved[off] {
			continue
		}
		if _, taken := a.used[off]; taken {
			continue
		}
		a.used[off] = owner
		a.last = off
		return a.ip(off), nil
	}
	return nil, fmt.Errorf("no free address left in %s/%d (%d in use)", a.ip(0), a.prefix, len(a.used))
}

// Claim marks ip as used by owner (recovering state); false when taken or outside.
func (a *IPAM) Claim(ip net.IP, owner string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	off, ok := a.offset(ip)
	if !ok || a.reserved[off] {
		return false
	}
	if cur, taken := a.used[off]; taken && cur != owner {
		return false
	}
	a.used[off] = owner
	return true
}

// Release frees ip; releasing a free address does nothing.
func (a *IPAM) Release(ip net.IP) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if off, ok := a.offset(ip); ok {
		delete(a.used, off)
	}
}

// InUse is the number of allocated addresses.
func (a *IPAM) InUse() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.used)
}
