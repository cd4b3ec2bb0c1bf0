{{/* Names and labels. */}}
{{- define "tokenbroker.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tokenbroker.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tokenbroker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenbroker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tokenbroker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tokenbroker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tokenbroker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tokenbroker.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tokenbroker.masterKeySecret" -}}
{{- if .Values.masterKey.existingSecret -}}
{{- .Values.masterKey.existingSecret -}}
{{- else if .Values.masterKey.keys -}}
{{- printf "%s-master-key" (include "tokenbroker.fullname" .) -}}
{{- else -}}
{{- fail "masterKey: set masterKey.existingSecret (a Secret with the key lines under \"keys\") or masterKey.keys (tokenbroker keys generate --id k1)" -}}
{{- end -}}
{{- end -}}

{{/* Where the pod mounts what the config names. */}}
{{- define "tokenbroker.configDir" -}}/etc/tokenbroker/config{{- end -}}
{{- define "tokenbroker.masterKeyDir" -}}/etc/tokenbroker/master{{- end -}}
{{- define "tokenbroker.tlsDir" -}}/etc/tokenbroker/tls{{- end -}}
{{- define "tokenbroker.etcdTLSDir" -}}/etc/tokenbroker/etcd{{- end -}}

{{/*
tokenbroker.yaml: .Values.config with the listen addresses, etcd, seal and
tls set from the chart's values.
*/}}
{{- define "tokenbroker.config" -}}
{{- if not .Values.etcd.endpoints -}}
{{- fail "etcd.endpoints: list the members of the external etcd cluster the replicas share" -}}
{{- end -}}
{{- $auth := (.Values.config | default dict).auth | default dict -}}
{{- if not (or $auth.api_keys $auth.jwt_issuers .Values.tls.clientCA) -}}
{{- fail "config.auth: no caller could authenticate: add an entry to config.auth.api_keys (tokenbroker apikeys create --offline --identity admin prints one) or config.auth.jwt_issuers, or set tls.clientCA" -}}
{{- end -}}
{{- $c := deepCopy (.Values.config | default dict) -}}
{{- $_ := set $c "grpc_addr" (printf ":%v" .Values.ports.grpc) -}}
{{- $_ := set $c "http_addr" (printf ":%v" .Values.ports.http) -}}
{{- $_ := set $c "metrics_addr" (printf ":%v" .Values.ports.metrics) -}}
{{- $etcd := dict "endpoints" .Values.etcd.endpoints "prefix" .Values.etcd.prefix "request_timeout" .Values.etcd.requestTimeout -}}
{{- if .Values.etcd.tls.existingSecret -}}
{{- $dir := include "tokenbroker.etcdTLSDir" . -}}
{{- $_ := set $etcd "tls" (dict "ca_file" (printf "%s/ca.crt" $dir) "cert_file" (printf "%s/tls.crt" $dir) "key_file" (printf "%s/tls.key" $dir)) -}}
{{- end -}}
{{- $_ := set $c "etcd" $etcd -}}
{{- $_ := set $c "seal" (dict "key_file" (printf "%s/keys" (include "tokenbroker.masterKeyDir" .))) -}}
{{- if .Values.tls.existingSecret -}}
{{- $dir := include "tokenbroker.tlsDir" . -}}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" $dir) "key_file" (printf "%s/tls.key" $dir) -}}
{{- if .Values.tls.clientCA -}}
{{- $_ := set $tls "client_ca_file" (printf "%s/ca.crt" $dir) -}}
{{- end -}}
{{- $_ := set $c "tls" $tls -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}
