package main

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

type fakeObjects struct {
	cms     map[string]*corev1.ConfigMap
	secrets map[string]*corev1.Secret
}

func (f fakeObjects) ConfigMap(ns, name string) (*corev1.ConfigMap, error) {
	if cm, ok := f.cms[ns+"/"+name]; ok {
		return cm, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, name)
}

func (f fakeObjects) Secret(ns, name string) (*corev1.Secret, error) {
	if s, ok := f.secrets[ns+"/"+name]; ok {
		return s, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
}

func TestExpand(t *testing.T) {
	m := MappingFor(map[string]string{"A": "alpha", "EMPTY": ""})
	cases := map[string]string{
		"":                "",
		"plain":           "plain",
		"$(A)":            "alpha",
		"x$(A)y":          "xalphay",
		"$(A)$(A)":        "alphaalpha",
		"$$(A)":           "$(A)",
		"$$$(A)":          "$alpha",
		"$(UNDEFINED)":    "$(UNDEFINED)",
		"$(EMPTY)x":       "x",
		"$(A":             "$(A",
		"$A":              "$A",
		"$":               "$",
		"a$":              "a$",
		"$()":             "$()",
		"$(A)$":           "alpha$",
		"$$":              "$",
		"$(A)-$(B)-$$(C)": "alpha-$(B)-$(C)",
	}
	for in, want := range cases {
		if got := Expand(in, m); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func envTestPod() *corev1.Pod {
	opt := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-1", Namespace: "shop", UID: "1234-5678",
			Labels:      map[string]string{"app": "web", "lane": "gray"},
			Annotations: map[string]string{"note": "a \"b\""},
		},
		Spec: corev1.PodSpec{
			NodeName:           "lanemesh-node",
			ServiceAccountName: "web-sa",
			Containers: []corev1.Container{{
				Name: "app",
				Resources: corev1.ResourceRequirements{
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
				},
				EnvFrom: []corev1.EnvFromSource{
					{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}},
					{Prefix: "S_", SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}}},
					{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Optional: &opt}},
				},
				Env: []corev1.EnvVar{
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: "POD_NS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
					{Name: "POD_UID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.uid"}}},
					{Name: "LANE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['lane']"}}},
					{Name: "NOTE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['note']"}}},
					{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
					{Name: "SA", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.serviceAccountName"}}},
					{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
					{Name: "POD_IPS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIPs"}}},
					{Name: "HOST_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
					{Name: "CPU_REQ_M", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.cpu", Divisor: resource.MustParse("1m")}}},
					{Name: "CPU_REQ", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.cpu"}}},
					{Name: "MEM_LIMIT_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}},
					{Name: "CPU_LIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}},
					{Name: "GREETING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "greeting"}}},
					{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "password"}}},
					{Name: "OPTIONAL", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "nope", Optional: &opt}}},
					{Name: "URL", Value: "http://$(POD_IP):8080/$(POD_NAME)?x=$$(POD_NAME)&y=$(MISSING)"},
					{Name: "FROM_CM", Value: "$(mode)-$(S_password)"},
					{Name: "SELF", Value: "$(SELF)"},
					{Name: "SVC", Value: "$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
				},
			}},
		},
	}
}

func envTestObjects() fakeObjects {
	return fakeObjects{
		cms: map[string]*corev1.ConfigMap{
			"shop/cfg": {Data: map[string]string{"greeting": "hello", "mode": "fast", "dash-key": "ok", "1bad": "skipped"}},
		},
		secrets: map[string]*corev1.Secret{
			"shop/sec": {Data: map[string][]byte{"password": []byte("s3cret")}},
		},
	}
}

func TestResolveEnv(t *testing.T) {
	pod := envTestPod()
	ctx := PodEnvContext{
		PodIP: "10.244.0.5", PodIPs: []string{"10.244.0.5"}, HostIP: "10.244.0.1",
		ServiceEnv:      ServiceEnv([]*corev1.Service{{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.1", Ports: []corev1.ServicePort{{Name: "https", Port: 443, Protocol: corev1.ProtocolTCP}}}}}),
		NodeAllocatable: nodeResources(),
	}
	env, err := ResolveEnv(pod, &pod.Spec.Containers[0], ctx, envTestObjects())
	if err != nil {
		t.Fatal(err)
	}
	m := EnvMap(env)
	want := map[string]string{
		"POD_NAME": "web-1", "POD_NS": "shop", "POD_UID": "1234-5678", "LANE": "gray", "NOTE": `a "b"`,
		"NODE": "lanemesh-node", "SA": "web-sa", "POD_IP": "10.244.0.5", "POD_IPS": "10.244.0.5", "HOST_IP": "10.244.0.1",
		"CPU_REQ_M": "250", "CPU_REQ": "1", "MEM_LIMIT_MI": "256", "CPU_LIMIT": "8",
		"GREETING": "hello", "PASSWORD": "s3cret", "greeting": "hello", "mode": "fast", "dash-key": "ok", "S_password": "s3cret",
		"URL":     "http://10.244.0.5:8080/web-1?x=$(POD_NAME)&y=$(MISSING)",
		"FROM_CM": "fast-s3cret", "SELF": "$(SELF)",
		"SVC":                           "10.96.0.1:443",
		"KUBERNETES_SERVICE_HOST":       "10.96.0.1",
		"KUBERNETES_SERVICE_PORT":       "443",
		"KUBERNETES_SERVICE_PORT_HTTPS": "443",
		"KUBERNETES_PORT":               "tcp://10.96.0.1:443",
		"KUBERNETES_PORT_443_TCP":       "tcp://10.96.0.1:443",
		"KUBERNETES_PORT_443_TCP_PROTO": "tcp",
		"KUBERNETES_PORT_443_TCP_PORT":  "443",
		"KUBERNETES_PORT_443_TCP_ADDR":  "10.96.0.1",
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("%s = %q (set %v), want %q", k, got, ok, v)
		}
	}
	for _, k := range []string{"OPTIONAL", "1bad"} {
		if _, ok := m[k]; ok {
			t.Errorf("%s should not be set", k)
		}
	}
	// Order: service variables, envFrom, then env in spec order.
	if env[0].Name != "KUBERNETES_SERVICE_HOST" || env[len(env)-1].Name != "SVC" {
		t.Errorf("order: first %s last %s", env[0].Name, env[len(env)-1].Name)
	}
}

func TestResolveEnvMissingObjects(t *testing.T) {
	pod := envTestPod()
	objs := envTestObjects()
	delete(objs.secrets, "shop/sec")
	_, err := ResolveEnv(pod, &pod.Spec.Containers[0], PodEnvContext{}, objs)
	var ce *ConfigError
	if err == nil || !strings.Contains(err.Error(), `secret "sec" not found`) {
		t.Fatalf("err %v", err)
	}
	if !asConfigError(err, &ce) {
		t.Fatalf("not a ConfigError: %T", err)
	}
	pod = envTestPod()
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "nokey"}}}}
	pod.Spec.Containers[0].EnvFrom = nil
	if _, err := ResolveEnv(pod, &pod.Spec.Containers[0], PodEnvContext{}, envTestObjects()); err == nil || !strings.Contains(err.Error(), "couldn't find key nokey") {
		t.Fatalf("missing key: %v", err)
	}
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.bogus"}}}}
	if _, err := ResolveEnv(pod, &pod.Spec.Containers[0], PodEnvContext{}, envTestObjects()); err == nil {
		t.Fatal("unsupported fieldPath accepted")
	}
}

func asConfigError(err error, target **ConfigError) bool {
	ce, ok := err.(*ConfigError)
	if ok {
		*target = ce
	}
	return ok
}

func TestFormatMapAndFieldValues(t *testing.T) {
	pod := envTestPod()
	got, _ := PodFieldValue(pod, "metadata.labels", PodEnvContext{})
	if got != "app=\"web\"\nlane=\"gray\"" {
		t.Fatalf("labels: %q", got)
	}
	got, _ = PodFieldValue(pod, `metadata.labels["app"]`, PodEnvContext{})
	if got != "web" {
		t.Fatalf("double-quoted subscript: %q", got)
	}
}

func TestResourceValueDivisorsRoundUp(t *testing.T) {
	pod := envTestPod()
	c := &pod.Spec.Containers[0]
	for _, tc := range []struct {
		res, div, want string
	}{
		{"requests.cpu", "", "1"},
		{"requests.cpu", "1m", "250"},
		{"requests.cpu", "100m", "3"},
		{"requests.memory", "", "134217728"},
		{"requests.memory", "1Mi", "128"},
		{"requests.memory", "1G", "1"},
		{"limits.memory", "1Ki", "262144"},
		{"limits.cpu", "1m", "8000"},
		{"limits.memory", "1Gi", "1"},
	} {
		ref := &corev1.ResourceFieldSelector{Resource: tc.res}
		if tc.div != "" {
			ref.Divisor = resource.MustParse(tc.div)
		}
		got, err := ContainerResourceValue(pod, c, ref, nodeResources())
		if err != nil || got != tc.want {
			t.Errorf("%s/%s = %q %v, want %q", tc.res, tc.div, got, err, tc.want)
		}
	}
	if _, err := ContainerResourceValue(pod, c, &corev1.ResourceFieldSelector{Resource: "limits.gpu"}, nil); err == nil {
		t.Error("unknown resource accepted")
	}
	if _, err := ContainerResourceValue(pod, nil, &corev1.ResourceFieldSelector{Resource: "limits.cpu", ContainerName: "nope"}, nil); err == nil {
		t.Error("unknown container accepted")
	}
}

func TestServiceEnvNamesAndPorts(t *testing.T) {
	env := ServiceEnv([]*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "my-svc"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.3.4", Ports: []corev1.ServicePort{
			{Name: "http-web", Port: 80, Protocol: corev1.ProtocolTCP}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "headless"}, Spec: corev1.ServiceSpec{ClusterIP: "None", Ports: []corev1.ServicePort{{Port: 1}}}},
	})
	m := EnvMap(env)
	for k, v := range map[string]string{
		"MY_SVC_SERVICE_HOST": "10.96.3.4", "MY_SVC_SERVICE_PORT": "80", "MY_SVC_SERVICE_PORT_HTTP_WEB": "80",
		"MY_SVC_SERVICE_PORT_DNS": "53", "MY_SVC_PORT": "tcp://10.96.3.4:80", "MY_SVC_PORT_53_UDP": "udp://10.96.3.4:53",
		"MY_SVC_PORT_53_UDP_PROTO": "udp",
	} {
		if m[k] != v {
			t.Errorf("%s = %q, want %q", k, m[k], v)
		}
	}
	for k := range m {
		if strings.HasPrefix(k, "HEADLESS") {
			t.Errorf("headless service exported %s", k)
		}
	}
}

func TestMergeEnv(t *testing.T) {
	got := MergeEnv([]EnvPair{{"PATH", "/bin"}, {"A", "1"}}, []EnvPair{{"B", "2"}, {"A", "img"}}, []EnvPair{{"A", "pod"}})
	want := []EnvPair{{"PATH", "/bin"}, {"A", "pod"}, {"B", "2"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%v", got)
	}
}
