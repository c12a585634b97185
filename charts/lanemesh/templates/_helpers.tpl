{{/* Names and labels shared by every template. */}}

{{- define "lanemesh.pilot" -}}lanemesh-pilot{{- end -}}

{{- define "lanemesh.labels" -}}
app.kubernetes.io/name: lanemesh-pilot
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lanemesh.selector" -}}
app.kubernetes.io/name: lanemesh-pilot
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lanemesh.pilotImage" -}}
{{ .Values.pilot.image.repository }}:{{ .Values.pilot.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "lanemesh.proxyImage" -}}
{{ .Values.proxy.image.repository }}:{{ .Values.proxy.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The pilot Service's DNS name: the webhook and discovery certificate are issued for it. */}}
{{- define "lanemesh.serviceHost" -}}
{{ include "lanemesh.pilot" . }}.{{ .Release.Namespace }}.svc
{{- end -}}

{{/*
The CA and the serving certificate, as a dict with ca.crt, tls.crt and tls.key (PEM). Kept from
the existing Secret on upgrade, so the webhook's caBundle and every injected sidecar's CA stay
valid; generated on install. Memoised in .Values so both templates that use it agree.
*/}}
{{- define "lanemesh.certs" -}}
{{- if not (hasKey .Values "__certs") -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace "lanemesh-pilot-tls" -}}
{{- if and $secret (hasKey $secret "data") (hasKey $secret.data "ca.crt") (hasKey $secret.data "tls.crt") (hasKey $secret.data "tls.key") -}}
{{- $_ := set .Values "__certs" (dict "ca.crt" (index $secret.data "ca.crt" | b64dec) "tls.crt" (index $secret.data "tls.crt" | b64dec) "tls.key" (index $secret.data "tls.key" | b64dec)) -}}
{{- else -}}
{{- $days := int .Values.webhook.certificateValidityDays -}}
{{- $ca := genCA "lanemesh-ca" $days -}}
{{- $host := include "lanemesh.serviceHost" . -}}
{{- $names := list (include "lanemesh.pilot" .) (printf "%s.%s" (include "lanemesh.pilot" .) .Release.Namespace) $host (printf "%s.cluster.local" $host) -}}
{{- $cert := genSignedCert $host nil $names $days $ca -}}
{{- $_ := set .Values "__certs" (dict "ca.crt" $ca.Cert "tls.crt" $cert.Cert "tls.key" $cert.Key) -}}
{{- end -}}
{{- end -}}
{{- toYaml .Values.__certs -}}
{{- end -}}

{{- define "lanemesh.gatewayLabels" -}}
app.kubernetes.io/name: lanemesh-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lanemesh.gatewaySelector" -}}
app.kubernetes.io/name: lanemesh-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
