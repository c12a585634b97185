package main

import (
	"bytes"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// ConfigError is a problem with a pod's configuration that keeps a container
// from being created (the kubelet's CreateContainerConfigError): a missing
// Secret or ConfigMap, an unknown field path, runAsNonRoot with UID 0, ...
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return e.Msg }

func configErrorf(format string, args ...any) error {
	return &ConfigError{Msg: fmt.Sprintf(format, args...)}
}

// ObjectSource fetches the objects a pod's env and volumes refer to. A missing
// object is an error for which apierrors.IsNotFound is true.
type ObjectSource interface {
	ConfigMap(namespace, name string) (*corev1.ConfigMap, error)
	Secret(namespace, name string) (*corev1.Secret, error)
}

// PodEnvContext is what env resolution needs beyond the spec.
type PodEnvContext struct {
	PodIP, HostIP string
	PodIPs        []string
	// ServiceEnv holds the docker-links variables of the visible Services
	// (see ServiceEnv); container env overrides them.
	ServiceEnv []EnvPair
	// NodeAllocatable bounds resourceFieldRef limits that the container does not set.
	NodeAllocatable corev1.ResourceList
}

// ResolveEnv computes a container's environment as the kubelet does
// (makeEnvironmentVariables): service variables, then envFrom in order, then
// env in order with $(VAR) expanded against everything defined before it.
// valueFrom values are never expanded.
func ResolveEnv(pod *corev1.Pod, c *corev1.Container, ctx PodEnvContext, src ObjectSource) ([]EnvPair, error) {
	var result envList
	defined := map[string]string{}
	set := func(name, value string) {
		result.set(name, value)
		defined[name] = value
	}
	for _, p := range ctx.ServiceEnv {
		set(p.Name, p.Value)
	}

	cms := map[string]*corev1.ConfigMap{}
	secrets := map[string]*corev1.Secret{}
	getCM := func(name string, optional *bool) (*corev1.ConfigMap, error) {
		if cm, ok := cms[name]; ok {
			return cm, nil
		}
		cm, err := src.ConfigMap(pod.Namespace, name)
		if err != nil {
			if apierrors.IsNotFound(err) && optional != nil && *optional {
				cms[name] = nil
				return nil, nil
			}
			if apierrors.IsNotFound(err) {
				return nil, configErrorf("configmap %q not found", name)
			}
			return nil, fmt.Errorf("configmap %q: %w", name, err)
		}
		cms[name] = cm
		return cm, nil
	}
	getSecret := func(name string, optional *bool) (*corev1.Secret, error) {
		if s, ok := secrets[name]; ok {
			return s, nil
		}
		s, err := src.Secret(pod.Namespace, name)
		if err != nil {
			if apierrors.IsNotFound(err) && optional != nil && *optional {
				secrets[name] = nil
				return nil, nil
			}
			if apierrors.IsNotFound(err) {
				return nil, configErrorf("secret %q not found", name)
			}
			return nil, fmt.Errorf("secret %q: %w", name, err)
		}
		secrets[name] = s
		return s, nil
	}

	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, err := getCM(from.ConfigMapRef.Name, from.ConfigMapRef.Optional)
			if err != nil {
				return nil, err
			}
			if cm == nil {
				continue
			}
			for _, k := range sortedKeys(cm.Data) {
				name := from.Prefix + k
				if len(validation.IsEnvVarName(name)) != 0 {
					continue // the kubelet skips invalid names (with an event)
				}
				set(name, cm.Data[k])
			}
		case from.SecretRef != nil:
			s, err := getSecret(from.SecretRef.Name, from.SecretRef.Optional)
			if err != nil {
				return nil, err
			}
			if s == nil {
				continue
			}
			keys := make([]string, 0, len(s.Data))
			for k := range s.Data {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				name := from.Prefix + k
				if len(validation.IsEnvVarName(name)) != 0 {
					continue
				}
				set(name, string(s.Data[k]))
			}
		}
	}

	for _, ev := range c.Env {
		if ev.ValueFrom == nil {
			set(ev.Name, Expand(ev.Value, MappingFor(defined)))
			continue
		}
		vf := ev.ValueFrom
		switch {
		case vf.FieldRef != nil:
			v, err := PodFieldValue(pod, vf.FieldRef.FieldPath, ctx)
			if err != nil {
				return nil, configErrorf("env %s: %v", ev.Name, err)
			}
			set(ev.Name, v)
		case vf.ResourceFieldRef != nil:
			v, err := ContainerResourceValue(pod, c, vf.ResourceFieldRef, ctx.NodeAllocatable)
			if err != nil {
				return nil, configErrorf("env %s: %v", ev.Name, err)
			}
			set(ev.Name, v)
		case vf.ConfigMapKeyRef != nil:
			ref := vf.ConfigMapKeyRef
			cm, err := getCM(ref.Name, ref.Optional)
			if err != nil {
				return nil, err
			}
			if cm == nil {
				continue
			}
			v, ok := cm.Data[ref.Key]
			if !ok {
				if b, okb := cm.BinaryData[ref.Key]; okb {
					v, ok = string(b), true
				}
			}
			if !ok {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, configErrorf("couldn't find key %s in ConfigMap %s/%s", ref.Key, pod.Namespace, ref.Name)
			}
			set(ev.Name, v)
		case vf.SecretKeyRef != nil:
			ref := vf.SecretKeyRef
			s, err := getSecret(ref.Name, ref.Optional)
			if err != nil {
				return nil, err
			}
			if s == nil {
				continue
			}
			b, ok := s.Data[ref.Key]
			if !ok {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, configErrorf("couldn't find key %s in Secret %s/%s", ref.Key, pod.Namespace, ref.Name)
			}
			set(ev.Name, string(b))
		default:
			return nil, configErrorf("env %s: unsupported valueFrom", ev.Name)
		}
	}
	return result, nil
}

// envList keeps the first position of each name and the last value.
type envList []EnvPair

func (l *envList) set(name, value string) {
	for i := range *l {
		if (*l)[i].Name == name {
			(*l)[i].Value = value
			return
		}
	}
	*l = append(*l, EnvPair{Name: name, Value: value})
}

// MergeEnv lays `over` on top of `base` (later wins, first position kept).
func MergeEnv(base []EnvPair, over ...[]EnvPair) []EnvPair {
	var out envList
	for _, p := range base {
		out.set(p.Name, p.Value)
	}
	for _, l := range over {
		for _, p := range l {
			out.set(p.Name, p.Value)
		}
	}
	return out
}

// EnvMap turns a list into a map (later wins).
func EnvMap(l []EnvPair) map[string]string {
	m := make(map[string]string, len(l))
	for _, p := range l {
		m[p.Name] = p.Value
	}
	return m
}

// EnvStrings renders NAME=value strings for exec.
func EnvStrings(l []EnvPair) []string {
	out := make([]string, 0, len(l))
	for _, p := range l {
		out = append(out, p.Name+"="+p.Value)
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// PodFieldValue resolves a downward API fieldPath (env or volume item).
func PodFieldValue(pod *corev1.Pod, path string, ctx PodEnvContext) (string, error) {
	if k, ok := subscript(path, "metadata.labels"); ok {
		return pod.Labels[k], nil
	}
	if k, ok := subscript(path, "metadata.annotations"); ok {
		return pod.Annotations[k], nil
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return FormatMap(pod.Labels), nil
	case "metadata.annotations":
		return FormatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP":
		return ctx.PodIP, nil
	case "status.podIPs":
		if len(ctx.PodIPs) > 0 {
			return strings.Join(ctx.PodIPs, ","), nil
		}
		return ctx.PodIP, nil
	case "status.hostIP":
		return ctx.HostIP, nil
	case "status.hostIPs":
		return ctx.HostIP, nil
	}
	return "", fmt.Errorf("unsupported fieldPath %q", path)
}

// subscript parses `prefix['key']` (also with double quotes).
func subscript(path, prefix string) (string, bool) {
	if !strings.HasPrefix(path, prefix+"[") || !strings.HasSuffix(path, "]") {
		return "", false
	}
	inner := path[len(prefix)+1 : len(path)-1]
	if len(inner) >= 2 && (inner[0] == '\'' || inner[0] == '"') && inner[len(inner)-1] == inner[0] {
		return inner[1 : len(inner)-1], true
	}
	return "", false
}

// FormatMap renders labels/annotations as the downward API volume does:
// sorted `key="value"` lines, values quoted like strconv.Quote.
func FormatMap(m map[string]string) string {
	var b strings.Builder
	for i, k := range sortedKeys(m) {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(strconv.Quote(m[k]))
	}
	return b.String()
}

// ContainerResourceValue resolves a resourceFieldRef for container c (or the
// container ref.ContainerName names). Unset limits are the node's allocatable,
// as in the kubelet; values are divided by the divisor and rounded up.
func ContainerResourceValue(pod *corev1.Pod, c *corev1.Container, ref *corev1.ResourceFieldSelector, alloc corev1.ResourceList) (string, error) {
	if ref.ContainerName != "" && (c == nil || ref.ContainerName != c.Name) {
		c = findContainer(pod, ref.ContainerName)
		if c == nil {
			return "", fmt.Errorf("container %q not found in the pod", ref.ContainerName)
		}
	}
	if c == nil {
		return "", fmt.Errorf("resourceFieldRef needs a containerName")
	}
	kind, name, ok := strings.Cut(ref.Resource, ".")
	if !ok || (kind != "limits" && kind != "requests") {
		return "", fmt.Errorf("unsupported resource %q", ref.Resource)
	}
	rn := corev1.ResourceName(name)
	switch rn {
	case corev1.ResourceCPU, corev1.ResourceMemory, corev1.ResourceEphemeralStorage:
	default:
		if !strings.HasPrefix(name, "hugepages-") {
			return "", fmt.Errorf("unsupported resource %q", ref.Resource)
		}
	}
	var q resource.Quantity
	if kind == "limits" {
		if v, ok := c.Resources.Limits[rn]; ok {
			q = v
		} else if v, ok := alloc[rn]; ok {
			q = v
		}
	} else if v, ok := c.Resources.Requests[rn]; ok {
		q = v
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	if rn == corev1.ResourceCPU {
		v := int64(math.Ceil(float64(q.MilliValue()) / float64(divisor.MilliValue())))
		return strconv.FormatInt(v, 10), nil
	}
	v := int64(math.Ceil(float64(q.Value()) / float64(divisor.Value())))
	return strconv.FormatInt(v, 10), nil
}

func findContainer(pod *corev1.Pod, name string) *corev1.Container {
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == name {
			return &pod.Spec.InitContainers[i]
		}
	}
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name {
			return &pod.Spec.Containers[i]
		}
	}
	return nil
}

// ServiceEnv renders the docker-links variables the kubelet gives containers
// (pkg/kubelet/envvars): for each Service with a cluster IP,
// NAME_SERVICE_HOST, NAME_SERVICE_PORT[_PORTNAME], NAME_PORT, and
// NAME_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]. services should hold the
// `kubernetes` Service of `default` and, when enableServiceLinks is not
// false, the pod namespace's Services; sorted by name for stable output.
func ServiceEnv(services []*corev1.Service) []EnvPair {
	sorted := append([]*corev1.Service(nil), services...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	var out envList
	for _, svc := range sorted {
		ip := svc.Spec.ClusterIP
		if ip == "" || ip == corev1.ClusterIPNone || len(svc.Spec.Ports) == 0 {
			continue
		}
		prefix := envName(svc.Name)
		out.set(prefix+"_SERVICE_HOST", ip)
		out.set(prefix+"_SERVICE_PORT", strconv.Itoa(int(svc.Spec.Ports[0].Port)))
		for _, p := range svc.Spec.Ports {
			if p.Name != "" {
				out.set(prefix+"_SERVICE_PORT_"+envName(p.Name), strconv.Itoa(int(p.Port)))
			}
		}
		first := svc.Spec.Ports[0]
		out.set(prefix+"_PORT", linkURL(first, ip))
		for _, p := range svc.Spec.Ports {
			proto := strings.ToLower(string(p.Protocol))
			if proto == "" {
				proto = "tcp"
			}
			base := fmt.Sprintf("%s_PORT_%d_%s", prefix, p.Port, strings.ToUpper(proto))
			out.set(base, linkURL(p, ip))
			out.set(base+"_PROTO", proto)
			out.set(base+"_PORT", strconv.Itoa(int(p.Port)))
			out.set(base+"_ADDR", ip)
		}
	}
	return out
}

func envName(s string) string {
	return strings.ToUpper(strings.ReplaceAll(s, "-", "_"))
}

func linkURL(p corev1.ServicePort, ip string) string {
	proto := strings.ToLower(string(p.Protocol))
	if proto == "" {
		proto = "tcp"
	}
	host := ip
	if strings.Contains(ip, ":") {
		host = "[" + ip + "]"
	}
	return fmt.Sprintf("%s://%s:%d", proto, host, p.Port)
}

// MappingFor returns the $(VAR) lookup used by Expand: a defined variable's
// value, otherwise the reference itself, unchanged.
func MappingFor(contexts ...map[string]string) func(string) string {
	return func(name string) string {
		for _, m := range contexts {
			if v, ok := m[name]; ok {
				return v
			}
		}
		return "$(" + name + ")"
	}
}

// Expand replaces $(VAR) references as Kubernetes does
// (third_party/forked/golang/expansion): `$$` is an escaped `$`, a
// reference to an undefined variable stays as written, and a `$(` without
// a closing parenthesis is kept literally.
func Expand(input string, mapping func(string) string) string {
	var buf bytes.Buffer
	checkpoint := 0
	for cursor := 0; cursor < len(input); cursor++ {
		if input[cursor] == '$' && cursor+1 < len(input) {
			buf.WriteString(input[checkpoint:cursor])
			read, isVar, advance := readVariableName(input[cursor+1:])
			if isVar {
				buf.WriteString(mapping(read))
			} else {
				buf.WriteString(read)
			}
			cursor += advance
			checkpoint = cursor + 1
		}
	}
	return buf.String() + input[checkpoint:]
}

func readVariableName(input string) (string, bool, int) {
	switch input[0] {
	case '$':
		return "$", false, 1
	case '(':
		for i := 1; i < len(input); i++ {
			if input[i] == ')' {
				return input[1:i], true, i + 1
			}
		}
		return "$(", false, 1
	default:
		return "$" + input[0:1], false, 1
	}
}

// ContainerArgv applies Kubernetes' rules for command/args over an image's
// entrypoint/cmd, and expands $(VAR) in command and args with env:
// command replaces the entrypoint (and drops the image's cmd), args replace cmd.
func ContainerArgv(image ImageEntry, c *corev1.Container, env map[string]string) []string {
	mapping := MappingFor(env)
	expand := func(in []string) []string {
		out := make([]string, len(in))
		for i, s := range in {
			out[i] = Expand(s, mapping)
		}
		return out
	}
	var argv []string
	switch {
	case len(c.Command) > 0:
		argv = append(expand(c.Command), expand(c.Args)...)
	case len(c.Args) > 0:
		argv = append(append([]string{}, image.Entrypoint...), expand(c.Args)...)
	default:
		argv = append(append([]string{}, image.Entrypoint...), image.Cmd...)
	}
	return argv
}
